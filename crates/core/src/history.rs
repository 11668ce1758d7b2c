//! What a resumed run needs of its journal: which tasks are settled and how, which timers are
//! armed, which children started, the latest context, and the signals not yet consumed.
//!
//! [`History::apply`] folds the journal one event at a time, alongside
//! [`crate::Execution::apply`] which builds the execution's view. The interpreter walks the
//! program from the start; a task whose path is settled here completes at once with its recorded
//! result and emits nothing, so a finished task never runs twice.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::Timestamp;
use crate::event::{Event, EventKind};
use crate::ids::{ExecutionId, StepId};
use crate::problem::Problem;

/// How a task ended, as the journal says.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    /// It succeeded with this output.
    Succeeded(Value),
    /// It failed for good.
    Failed(Problem),
    /// It did not run (its condition was false, or something it needs failed).
    Skipped,
}

/// One settled task: its result and the sequence number of the event that settled it.
#[derive(Debug, Clone, PartialEq)]
pub struct SettledTask {
    /// How it ended.
    pub result: Settled,
    /// The sequence number of the event that settled it (for ordering completions).
    pub sequence: u64,
    /// The attempt that settled it.
    pub attempt: u32,
}

/// A signal sent to the execution and not consumed yet.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingSignal {
    /// The sequence number of its `SignalReceived` event.
    pub sequence: u64,
    /// Its name.
    pub name: String,
    /// Its data.
    pub data: Value,
}

/// The journal folded for resumption.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Settled tasks by path.
    pub settled: HashMap<StepId, SettledTask>,
    /// Armed timers by the path of their `wait` task.
    pub timers: HashMap<StepId, Timestamp>,
    /// Started children by the path of their `workflow` task.
    pub children: HashMap<StepId, ExecutionId>,
    /// The execution's context as the last export left it.
    pub context: Option<Value>,
    /// Signals received and not consumed, oldest first.
    pub signals: BTreeMap<u64, PendingSignal>,
    /// Attempts made per task that has not settled (to number the next one).
    pub attempts: HashMap<StepId, u32>,
}

impl History {
    /// Folds one journal event in.
    pub fn apply(&mut self, event: &Event) {
        let settle = |history: &mut Self, step: &StepId, result: Settled, attempt: u32| {
            history.attempts.remove(step);
            history.settled.insert(step.clone(), SettledTask { result, sequence: event.sequence, attempt });
        };
        match &event.kind {
            EventKind::TaskScheduled { step, attempt, .. } => {
                let seen = self.attempts.entry(step.clone()).or_default();
                *seen = (*seen).max(*attempt);
            }
            EventKind::TaskSucceeded { step, attempt, output, context } => {
                settle(self, step, Settled::Succeeded(output.clone()), *attempt);
                if let Some(context) = context {
                    self.context = Some(context.clone());
                }
            }
            EventKind::TaskFailed { step, attempt, error, retryable, problem } => {
                if *retryable {
                    let seen = self.attempts.entry(step.clone()).or_default();
                    *seen = (*seen).max(*attempt);
                } else {
                    let problem = problem.clone().unwrap_or_else(|| Problem::standard("runtime", error.clone()));
                    settle(self, step, Settled::Failed(problem), *attempt);
                }
            }
            EventKind::TaskSkipped { step, .. } => settle(self, step, Settled::Skipped, 0),
            EventKind::TimerStarted { step, due } => {
                self.timers.insert(step.clone(), *due);
            }
            EventKind::SignalReceived { name, data } => {
                self.signals.insert(
                    event.sequence,
                    PendingSignal { sequence: event.sequence, name: name.clone(), data: data.clone() },
                );
            }
            EventKind::SignalConsumed { step, signals, output } => {
                for signal in signals {
                    self.signals.remove(signal);
                }
                settle(self, step, Settled::Succeeded(output.clone()), 0);
            }
            EventKind::ChildStarted { step, child } => {
                self.children.insert(step.clone(), *child);
            }
            EventKind::Started { .. }
            | EventKind::Paused
            | EventKind::Resumed
            | EventKind::Cancelled { .. }
            | EventKind::Completed { .. }
            | EventKind::Failed { .. } => {}
        }
    }

    /// The history of a whole journal.
    pub fn of(journal: &[Event]) -> Self {
        let mut history = Self::default();
        for event in journal {
            history.apply(event);
        }
        history
    }

    /// The first pending signals that satisfy a `listen` for `names`: the oldest with any of
    /// the names, or (`all`) the oldest of each name, once every name has one.
    pub fn matching_signals(&self, names: &[String], all: bool) -> Option<Vec<&PendingSignal>> {
        if all {
            names.iter().map(|name| self.signals.values().find(|s| s.name == *name)).collect()
        } else {
            self.signals.values().find(|s| names.contains(&s.name)).map(|s| vec![s])
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ids::ServiceId;

    fn event(sequence: u64, kind: EventKind) -> Event {
        Event { execution: ExecutionId::generate(), sequence, at: chrono::Utc::now(), kind }
    }

    #[test]
    fn the_journal_folds_into_what_resumption_needs() {
        let step = |s: &str| StepId::new(s).unwrap();
        let journal = [
            event(1, EventKind::Started { input: json!({}) }),
            event(2, EventKind::TaskScheduled { step: step("a"), attempt: 1, service: ServiceId::new("s").unwrap() }),
            event(
                3,
                EventKind::TaskFailed {
                    step: step("a"),
                    attempt: 1,
                    error: "x".into(),
                    retryable: true,
                    problem: None,
                },
            ),
            event(4, EventKind::TaskScheduled { step: step("a"), attempt: 2, service: ServiceId::new("s").unwrap() }),
            event(5, EventKind::SignalReceived { name: "approve".into(), data: json!(1) }),
            event(6, EventKind::SignalReceived { name: "approve".into(), data: json!(2) }),
            event(
                7,
                EventKind::TaskSucceeded {
                    step: step("b/0/c"),
                    attempt: 0,
                    output: json!(7),
                    context: Some(json!({"k": 1})),
                },
            ),
            event(8, EventKind::SignalConsumed { step: step("l"), signals: vec![5], output: json!(1) }),
            event(9, EventKind::TimerStarted { step: step("w"), due: chrono::Utc::now() }),
            event(
                10,
                EventKind::TaskFailed {
                    step: step("d"),
                    attempt: 3,
                    error: "no".into(),
                    retryable: false,
                    problem: None,
                },
            ),
        ];
        let history = History::of(&journal);
        assert_eq!(history.attempts.get(&step("a")), Some(&2));
        assert_eq!(history.settled[&step("b/0/c")].result, Settled::Succeeded(json!(7)));
        assert_eq!(history.settled[&step("b/0/c")].sequence, 7);
        assert_eq!(history.context, Some(json!({"k": 1})));
        assert_eq!(history.signals.keys().copied().collect::<Vec<_>>(), [6]);
        assert!(history.timers.contains_key(&step("w")));
        let Settled::Failed(problem) = &history.settled[&step("d")].result else { panic!("failed") };
        assert_eq!(problem.detail.as_deref(), Some("no"));
        let names = ["approve".to_owned()];
        assert_eq!(history.matching_signals(&names, false).unwrap()[0].sequence, 6);
        assert!(history.matching_signals(&["approve".to_owned(), "other".to_owned()], true).is_none());
    }
}
