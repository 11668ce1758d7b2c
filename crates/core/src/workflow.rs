//! Workflow definitions as users write them (YAML or JSON): [`WorkflowDefinition`] and [`Step`].
//!
//! Expressions are jq programs written `${ ... }` inside strings of the input and output
//! mappings; the workflow engine parses and checks them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::call::{GrpcCall, HttpCall, StepCall};
use crate::error::{Error, Result};
use crate::ids::{ServiceId, StepId, WorkflowName};
use crate::requirements::ServiceRequirements;

/// How a failed attempt is retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retry.
    pub max_attempts: u32,
    /// Backoff before the first retry.
    #[serde(with = "crate::duration::serde_text")]
    pub initial_backoff: Duration,
    /// Longest backoff between attempts.
    #[serde(with = "crate::duration::serde_text")]
    pub max_backoff: Duration,
    /// Growth factor of the backoff per attempt.
    pub multiplier: f64,
    /// Error classes that are never retried, e.g. `invalid_input`.
    pub non_retryable: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            non_retryable: Vec::new(),
        }
    }
}

/// What a step's failure does to the run. Written `on_error: fail | continue | fallback`,
/// with `fallback: <step>` beside it for the last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Fail the whole run.
    #[default]
    Fail,
    /// Carry on; steps that need this step's output are skipped.
    Continue,
    /// Run the named step instead; its output stands in for this step's.
    Fallback(StepId),
}

/// Which service a step calls. Written as `service: <id>` (with optional `alternatives`) or
/// `query: { <requirements> }`.
#[derive(Debug, Clone, PartialEq)]
pub enum StepTarget {
    /// A pinned service, with ranked equivalents to fail over to.
    Service {
        /// The service to call.
        id: ServiceId,
        /// Equivalents to try, in order, when it fails.
        alternatives: Vec<ServiceId>,
    },
    /// The best healthy service matching these requirements, resolved at dispatch.
    Query(ServiceRequirements),
}

/// Settings every step inherits unless it sets its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepDefaults {
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Time limit of one attempt.
    #[serde(with = "crate::duration::serde_text_opt", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StepDocument", into = "StepDocument")]
pub struct Step {
    /// Unique within the definition.
    pub id: StepId,
    /// The service it calls.
    pub target: StepTarget,
    /// How it calls the service when a JSON POST of its input (HTTP) or the endpoint's method
    /// (gRPC) is not it: written `http: {..}` or `grpc: {..}`.
    pub call: Option<StepCall>,
    /// The request payload: JSON in which strings may hold `${ jq }` expressions over
    /// `input` (the run's input) and `steps.<id>.output`.
    pub input: serde_json::Value,
    /// Steps that must succeed first (besides those its expressions refer to).
    pub depends_on: Vec<StepId>,
    /// Overrides the default retry policy.
    pub retry: Option<RetryPolicy>,
    /// Time limit of one attempt.
    pub timeout: Option<Duration>,
    /// Time limit of all attempts together.
    pub task_timeout: Option<Duration>,
    /// What its failure does.
    pub on_error: ErrorPolicy,
}

/// A step as written: flat keys, checked into a [`Step`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDocument {
    id: StepId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service: Option<ServiceId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    alternatives: Vec<ServiceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    query: Option<ServiceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<HttpCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grpc: Option<GrpcCall>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    input: serde_json::Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    depends_on: Vec<StepId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry: Option<RetryPolicy>,
    #[serde(default, with = "crate::duration::serde_text_opt", skip_serializing_if = "Option::is_none")]
    timeout: Option<Duration>,
    #[serde(default, with = "crate::duration::serde_text_opt", skip_serializing_if = "Option::is_none")]
    task_timeout: Option<Duration>,
    #[serde(default = "default_on_error")]
    on_error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fallback: Option<StepId>,
}

fn default_on_error() -> String {
    "fail".to_owned()
}

impl TryFrom<StepDocument> for Step {
    type Error = Error;

    fn try_from(doc: StepDocument) -> Result<Self> {
        let place = |field: &str| format!("steps.{}.{field}", doc.id);
        let target = match (doc.service, doc.query) {
            (Some(id), None) => StepTarget::Service { id, alternatives: doc.alternatives },
            (None, Some(query)) if doc.alternatives.is_empty() => StepTarget::Query(query),
            (None, Some(_)) => {
                return Err(Error::invalid(place("alternatives"), "[..]", "alternatives go with service, not query"));
            }
            (Some(_), Some(_)) => return Err(Error::invalid(place("query"), "{..}", "set service or query, not both")),
            (None, None) => return Err(Error::invalid(place("service"), "", "set service or query")),
        };
        let call = match (doc.http, doc.grpc) {
            (None, None) => None,
            (Some(http), None) => Some(StepCall::Http(http)),
            (None, Some(grpc)) => Some(StepCall::Grpc(grpc)),
            (Some(_), Some(_)) => return Err(Error::invalid(place("grpc"), "{..}", "set http or grpc, not both")),
        };
        let on_error = match (doc.on_error.as_str(), doc.fallback) {
            ("fail", None) => ErrorPolicy::Fail,
            ("continue", None) => ErrorPolicy::Continue,
            ("fallback", Some(step)) => ErrorPolicy::Fallback(step),
            ("fallback", None) => {
                return Err(Error::invalid(place("fallback"), "", "on_error: fallback needs a fallback step"));
            }
            ("fail" | "continue", Some(step)) => {
                return Err(Error::invalid(place("fallback"), step, "needs on_error: fallback"));
            }
            (other, _) => return Err(Error::invalid(place("on_error"), other, "must be fail, continue or fallback")),
        };
        Ok(Self {
            id: doc.id,
            target,
            call,
            input: doc.input,
            depends_on: doc.depends_on,
            retry: doc.retry,
            timeout: doc.timeout,
            task_timeout: doc.task_timeout,
            on_error,
        })
    }
}

impl From<Step> for StepDocument {
    fn from(step: Step) -> Self {
        let (service, alternatives, query) = match step.target {
            StepTarget::Service { id, alternatives } => (Some(id), alternatives, None),
            StepTarget::Query(query) => (None, Vec::new(), Some(query)),
        };
        let (http, grpc) = match step.call {
            None => (None, None),
            Some(StepCall::Http(http)) => (Some(http), None),
            Some(StepCall::Grpc(grpc)) => (None, Some(grpc)),
        };
        let (on_error, fallback) = match step.on_error {
            ErrorPolicy::Fail => ("fail", None),
            ErrorPolicy::Continue => ("continue", None),
            ErrorPolicy::Fallback(step) => ("fallback", Some(step)),
        };
        Self {
            id: step.id,
            service,
            alternatives,
            query,
            http,
            grpc,
            input: step.input,
            depends_on: step.depends_on,
            retry: step.retry,
            timeout: step.timeout,
            task_timeout: step.task_timeout,
            on_error: on_error.to_owned(),
            fallback,
        }
    }
}

/// A workflow as written by a user or produced by the planner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDefinition {
    /// The workflow's name.
    pub name: WorkflowName,
    /// What it does, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Its steps.
    pub steps: Vec<Step>,
    /// The run's output: JSON in which strings may hold `${ jq }` expressions.
    #[serde(default)]
    pub output: serde_json::Value,
    /// Settings steps inherit.
    #[serde(default)]
    pub defaults: StepDefaults,
    /// Time limit of the whole run.
    #[serde(default, with = "crate::duration::serde_text_opt", skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Duration>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_reads_from_yaml() {
        let yaml = r#"
name: checkout
steps:
  - id: charge
    service: pay
    alternatives: [pay-backup]
    input: { amount: "${ .input.amount }" }
    retry: { max_attempts: 5, initial_backoff: 100ms }
    timeout: 2s
  - id: notify
    query: { capabilities: [email.send], max_latency_p99_ms: 200 }
    depends_on: [charge]
    on_error: continue
output: { receipt: "${ .steps.charge.output.id }" }
deadline: 1m
"#;
        let def: WorkflowDefinition = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(def.steps.len(), 2);
        assert_eq!(def.steps[0].retry.as_ref().unwrap().max_attempts, 5);
        assert_eq!(def.steps[0].retry.as_ref().unwrap().max_backoff, Duration::from_secs(10));
        assert_eq!(def.steps[1].on_error, ErrorPolicy::Continue);
        assert!(matches!(&def.steps[1].target, StepTarget::Query(r) if r.capabilities == ["email.send"]));
        let json = serde_json::to_string(&def).unwrap();
        assert_eq!(serde_json::from_str::<WorkflowDefinition>(&json).unwrap(), def);
    }

    #[test]
    fn unknown_fields_and_bad_names_are_rejected() {
        let err = serde_yaml::from_str::<WorkflowDefinition>("name: x\nsteps: []\ncolour: red\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
        let err = serde_yaml::from_str::<WorkflowDefinition>("name: Bad\nsteps: []\n").unwrap_err();
        assert!(err.to_string().contains(r#"invalid workflow "Bad""#), "{err}");
        let err = serde_yaml::from_str::<WorkflowDefinition>("name: x\nsteps: []\ndeadline: 5x\n").unwrap_err();
        assert!(err.to_string().contains("unknown unit"), "{err}");
        let step = |extra: &str| {
            let yaml = format!("name: x\nsteps:\n  - id: a\n{extra}");
            serde_yaml::from_str::<WorkflowDefinition>(&yaml).unwrap_err().to_string()
        };
        assert!(step("    input: {}\n").contains("invalid steps.a.service"));
        assert!(step("    service: s\n    query: {capabilities: [c]}\n").contains("not both"));
        assert!(step("    service: s\n    on_error: explode\n").contains(r#"invalid steps.a.on_error "explode""#));
        assert!(step("    service: s\n    on_error: fallback\n").contains("needs a fallback step"));
        let err = serde_yaml::from_str::<WorkflowDefinition>("name: x\nsteps: []\ndeadline: 5x\n").unwrap_err();
        assert!(err.to_string().contains("unknown unit"), "{err}");
    }
}
