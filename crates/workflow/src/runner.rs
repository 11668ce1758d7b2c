//! The runner port: how the engine has a checked definition run, without knowing the executor.

use std::future::Future;
use std::sync::Arc;

use baton_core::{Event, EventSink, ExecutionId, History, Outcome, Timestamp, TraceContext};
use serde_json::Value;

use crate::definition::CheckedDefinition;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The execution; calls derive their idempotency keys from it and the step.
    pub execution: ExecutionId,
    /// The definition version pinned by the execution.
    pub version: u32,
    /// The definition.
    pub definition: Arc<CheckedDefinition>,
    /// The run's input.
    pub input: Value,
    /// What the journal says already happened: settled tasks are not run again, armed timers
    /// keep their due time.
    pub history: History,
    /// The trace context of the caller that started the execution, whose trace it continues.
    pub trace: Option<TraceContext>,
    /// Where the run says it has nothing left to do but wait (for how long, when a timer is
    /// what it waits for); the engine may then park the execution.
    pub idle: IdleSignal,
}

/// Told when a run only waits: `Some(t)` when its earliest timer fires at `t`, `None` when only
/// signals or children can move it, with the run's activity count for
/// [`RunHandle::suspend_if_idle`].
#[derive(Clone)]
pub struct IdleSignal(pub Arc<dyn Fn(Option<Timestamp>, u64) + Send + Sync>);

impl std::fmt::Debug for IdleSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdleSignal")
    }
}

/// Runs checked definitions. Events go to the sink in the order they happen; their sequence
/// numbers are the runner's own (the engine numbers the journal). A run emits `Started` only
/// when no step was completed before, and ends with exactly one of `Completed`, `Failed` or
/// `Cancelled`, after which it drops the sink.
pub trait Runner: Send + Sync + 'static {
    /// The handle of a run in progress.
    type Handle: RunHandle;

    /// Starts a run; `Err` with a reason when the runner cannot run this definition.
    fn start(&self, request: RunRequest, events: Arc<dyn EventSink<Event>>) -> Result<Self::Handle, String>;
}

/// Controls a run in progress.
pub trait RunHandle: Send + Sync + 'static {
    /// Stops dispatching; in-flight steps finish and are reported.
    fn pause(&self);
    /// Dispatches again after a pause.
    fn resume(&self);
    /// Stops the run.
    fn cancel(&self, reason: &str);
    /// Stops the run without an outcome, abandoning what is in flight, if nothing happened
    /// since it said it only waits with activity count `mark`, and waits until it has stopped
    /// (true); a run that moved on meanwhile runs on (false). The engine parks a suspended
    /// execution and runs it again later from its journal.
    fn suspend_if_idle(&mut self, mark: u64) -> impl Future<Output = bool> + Send;
    /// Waits for the run to end.
    fn outcome(self) -> impl Future<Output = Outcome> + Send;
}

#[cfg(any(test, feature = "test-util"))]
pub use fake::{FakeHandle, FakeRunner};

#[cfg(any(test, feature = "test-util"))]
mod fake {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::{Arc, Mutex};

    use baton_core::{Event, EventKind, EventSink, ExecutionId, Problem, ServiceId, StepId, StepTarget};
    use serde_json::{Value, json};
    use tokio::sync::{Semaphore, watch};

    use super::{Outcome, RunHandle, RunRequest, Runner};

    /// A runner for tests: runs steps one at a time in topological order, each after taking
    /// one permit (none needed when built with [`FakeRunner::free`]), with the output
    /// `{"step": <id>, "input": <rendered input>}` unless [`FakeRunner::set_output`] says
    /// otherwise. Like the executor, it waits for each completion to be kept
    /// ([`EventSink::record`]) before the next step and fails the step when it is refused.
    /// Records every dispatch.
    #[derive(Debug, Clone)]
    pub struct FakeRunner {
        permits: Option<Arc<Semaphore>>,
        outputs: Arc<Mutex<HashMap<StepId, Value>>>,
        dispatched: Arc<Mutex<Vec<(ExecutionId, StepId)>>>,
    }

    impl FakeRunner {
        /// A runner whose steps each wait for a permit from [`FakeRunner::release`].
        pub fn gated() -> Self {
            Self { permits: Some(Arc::new(Semaphore::new(0))), outputs: Arc::default(), dispatched: Arc::default() }
        }

        /// A runner whose steps run straight away.
        pub fn free() -> Self {
            Self { permits: None, outputs: Arc::default(), dispatched: Arc::default() }
        }

        /// Lets `steps` more steps run.
        pub fn release(&self, steps: usize) {
            if let Some(permits) = &self.permits {
                permits.add_permits(steps);
            }
        }

        /// Makes every run's step `step` output `output`.
        pub fn set_output(&self, step: &StepId, output: Value) {
            self.outputs.lock().expect("outputs lock").insert(step.clone(), output);
        }

        /// Every `(execution, step)` dispatched so far, in order.
        pub fn dispatched(&self) -> Vec<(ExecutionId, StepId)> {
            self.dispatched.lock().expect("dispatched lock").clone()
        }
    }

    /// The handle of a [`FakeRunner`] run.
    #[derive(Debug)]
    pub struct FakeHandle {
        control: watch::Sender<Control>,
        done: tokio::task::JoinHandle<Outcome>,
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Control {
        Running,
        Paused,
        Cancelled(String),
    }

    impl RunHandle for FakeHandle {
        fn pause(&self) {
            self.control.send_if_modified(|c| std::mem::replace(c, Control::Paused) == Control::Running);
        }

        fn resume(&self) {
            self.control.send_if_modified(|c| {
                let paused = *c == Control::Paused;
                if paused {
                    *c = Control::Running;
                }
                paused
            });
        }

        async fn suspend_if_idle(&mut self, _mark: u64) -> bool {
            // The fake never says it is idle, so it is never asked.
            false
        }

        fn cancel(&self, reason: &str) {
            self.control.send_replace(Control::Cancelled(reason.to_owned()));
        }

        async fn outcome(self) -> Outcome {
            self.done
                .await
                .unwrap_or_else(|e| Outcome::Failed(Problem::runtime(format!("fake run ended abnormally: {e}"))))
        }
    }

    impl Runner for FakeRunner {
        type Handle = FakeHandle;

        fn start(&self, request: RunRequest, events: Arc<dyn EventSink<Event>>) -> Result<FakeHandle, String> {
            let (control, mut watch) = watch::channel(Control::Running);
            let runner = self.clone();
            let done = tokio::spawn(async move {
                let mut sequence = 0;
                let mut event = |kind: EventKind| {
                    sequence += 1;
                    Event { execution: request.execution, sequence, at: chrono_now(), kind }
                };
                if request.history.settled.is_empty() {
                    events.publish(event(EventKind::Started { input: request.input.clone() }));
                }
                let definition = &request.definition;
                let mut outputs: BTreeMap<StepId, Value> = request
                    .history
                    .settled
                    .iter()
                    .filter_map(|(step, settled)| match &settled.result {
                        baton_core::Settled::Succeeded(output) => Some((step.clone(), output.clone())),
                        _ => None,
                    })
                    .collect();
                let outcome = 'run: {
                    for &i in definition.order() {
                        let step = &definition.definition().steps[i];
                        if outputs.contains_key(&step.id) {
                            continue;
                        }
                        // Wait while paused and for a permit; stop when cancelled. A permit
                        // taken just as the run paused is given back.
                        loop {
                            let state = watch.borrow_and_update().clone();
                            match state {
                                Control::Running => {}
                                Control::Cancelled(reason) => break 'run Outcome::Cancelled(reason),
                                Control::Paused => {
                                    if watch.changed().await.is_err() {
                                        break 'run Outcome::Cancelled("handle dropped".to_owned());
                                    }
                                    continue;
                                }
                            }
                            let Some(permits) = &runner.permits else { break };
                            tokio::select! {
                                permit = permits.acquire() => permit.expect("never closed").forget(),
                                changed = watch.changed() => {
                                    if changed.is_err() {
                                        break 'run Outcome::Cancelled("handle dropped".to_owned());
                                    }
                                    continue;
                                }
                            }
                            if *watch.borrow() == Control::Running {
                                break;
                            }
                            permits.add_permits(1);
                        }
                        let service = match step.target() {
                            Some(StepTarget::Service { id, .. }) => id.clone(),
                            _ => ServiceId::new("query").expect("a valid id"),
                        };
                        runner.dispatched.lock().expect("dispatched lock").push((request.execution, step.id.clone()));
                        events.publish(event(EventKind::TaskScheduled { step: step.id.clone(), attempt: 1, service }));
                        let steps: serde_json::Map<String, Value> =
                            outputs.iter().map(|(k, v)| (k.to_string(), json!({ "output": v }))).collect();
                        let context = json!({"input": request.input, "steps": steps});
                        let output = match runner.outputs.lock().expect("outputs lock").get(&step.id) {
                            Some(output) => Ok(output.clone()),
                            None => definition.inputs()[i]
                                .render(&context)
                                .map(|input| json!({"step": step.id.as_str(), "input": input})),
                        };
                        // Like the executor, the next step waits until the completion is kept.
                        let output = match output {
                            Ok(output) => events
                                .record(event(EventKind::TaskSucceeded {
                                    step: step.id.clone(),
                                    attempt: 1,
                                    output: output.clone(),
                                    context: None,
                                }))
                                .await
                                .map(|()| output)
                                .map_err(|refusal| refusal.to_string()),
                            Err(e) => Err(e.to_string()),
                        };
                        match output {
                            Ok(output) => {
                                outputs.insert(step.id.clone(), output);
                            }
                            Err(error) => {
                                events.publish(event(EventKind::TaskFailed {
                                    step: step.id.clone(),
                                    attempt: 1,
                                    error: error.clone(),
                                    retryable: false,
                                    problem: None,
                                }));
                                break 'run Outcome::Failed(Problem::runtime(format!(
                                    "step {} failed: {error}",
                                    step.id
                                )));
                            }
                        }
                    }
                    let steps: serde_json::Map<String, Value> =
                        outputs.iter().map(|(k, v)| (k.to_string(), json!({ "output": v }))).collect();
                    match definition.output().render(&json!({"input": request.input, "steps": steps})) {
                        Ok(output) => Outcome::Completed(output),
                        Err(e) => Outcome::Failed(Problem::runtime(e.to_string())),
                    }
                };
                events.publish(event(outcome.clone().into()));
                outcome
            });
            Ok(FakeHandle { control, done })
        }
    }

    fn chrono_now() -> baton_core::Timestamp {
        use baton_core::Clock as _;
        baton_core::SystemClock.now()
    }
}
