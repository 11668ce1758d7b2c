//! Traces: W3C trace context (`traceparent`, `tracestate`) and the spans of an execution.
//!
//! One trace per execution: its trace id is the caller's when `StartExecution` came with a
//! `traceparent`, else the execution id's 16 bytes. The execution is a span, and each step
//! attempt a span under it. Span ids are derived from the execution, step and attempt, not
//! drawn at random, so the ids a service saw in `traceparent` and the spans exported from the
//! journal agree, also after a restart resumed the execution.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::error::{Error, Result};
use crate::ids::{ExecutionId, ServiceId, StepId, WorkflowName};

/// The longest `tracestate` kept (the W3C limit is 512 characters).
pub const MAX_TRACESTATE_LEN: usize = 512;

/// A 16-byte trace id, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// A caller's trace context, as `StartExecution` received it: its `traceparent` (checked and
/// normalised) and `tracestate` (passed on as it is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TraceContextDocument", into = "TraceContextDocument")]
pub struct TraceContext {
    trace_id: TraceId,
    parent: SpanId,
    flags: u8,
    state: Option<Arc<str>>,
}

#[derive(Serialize, Deserialize)]
struct TraceContextDocument {
    traceparent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracestate: Option<String>,
}

impl TryFrom<TraceContextDocument> for TraceContext {
    type Error = Error;
    fn try_from(doc: TraceContextDocument) -> Result<Self> {
        Self::parse(&doc.traceparent, doc.tracestate.as_deref())
    }
}

impl From<TraceContext> for TraceContextDocument {
    fn from(context: TraceContext) -> Self {
        Self { traceparent: context.traceparent(), tracestate: context.state.as_deref().map(str::to_owned) }
    }
}

fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut bytes = [0u8; N];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(bytes)
}

impl TraceContext {
    /// Parses a `traceparent` (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; a later
    /// version's extra fields are ignored, as the W3C specification asks) and keeps `tracestate`
    /// when it is at most 512 printable characters.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Result<Self> {
        let bad = |reason: &str| Error::invalid("traceparent", traceparent, reason);
        let mut parts = traceparent.trim().split('-');
        let (Some(version), Some(trace), Some(parent), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("must be version-traceid-parentid-flags"));
        };
        match hex::<1>(version) {
            Some([0xff]) | None => return Err(bad("has an invalid version")),
            Some([0]) if parts.next().is_some() => return Err(bad("version 00 has four fields")),
            _ => {}
        }
        let trace_id = hex::<16>(trace).filter(|t| *t != [0; 16]).ok_or_else(|| bad("has an invalid trace id"))?;
        let parent = hex::<8>(parent).filter(|p| *p != [0; 8]).ok_or_else(|| bad("has an invalid parent id"))?;
        let [flags] = hex::<1>(flags).ok_or_else(|| bad("has invalid flags"))?;
        let state = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE_LEN && s.chars().all(|c| (' '..='~').contains(&c)))
            .map(Arc::from);
        Ok(Self { trace_id: TraceId(trace_id), parent: SpanId(parent), flags, state })
    }

    /// The caller's trace.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The caller's span, the parent of the execution's.
    pub fn parent(&self) -> SpanId {
        self.parent
    }

    /// Whether the caller records this trace (the `sampled` flag).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The `tracestate` passed on.
    pub fn tracestate(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// The normalised `traceparent` (version 00).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.parent, self.flags & 1)
    }
}

/// The trace of one execution: where its spans hang and how calls carry them on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionTrace {
    execution: ExecutionId,
    trace_id: TraceId,
    root: SpanId,
    parent: Option<SpanId>,
    sampled: bool,
    state: Option<Arc<str>>,
}

impl ExecutionTrace {
    /// The trace of `execution`: the caller's trace when `caller` is given, else a trace of
    /// its own (id: the execution id's bytes), sampled.
    pub fn new(execution: ExecutionId, caller: Option<&TraceContext>) -> Self {
        let root = span_id(&[execution.as_uuid().as_bytes(), b"execution"]);
        match caller {
            Some(caller) => Self {
                execution,
                trace_id: caller.trace_id,
                root,
                parent: Some(caller.parent),
                sampled: caller.sampled(),
                state: caller.state.clone(),
            },
            None => Self {
                execution,
                trace_id: TraceId(*execution.as_uuid().as_bytes()),
                root,
                parent: None,
                sampled: true,
                state: None,
            },
        }
    }

    /// The trace id.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The execution's span.
    pub fn root(&self) -> SpanId {
        self.root
    }

    /// The caller's span, when the trace is the caller's.
    pub fn parent(&self) -> Option<SpanId> {
        self.parent
    }

    /// Whether its spans are recorded (the caller's decision, else yes).
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// The `tracestate` passed on.
    pub fn tracestate(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// The span of attempt `attempt` of `step`.
    pub fn attempt(&self, step: &StepId, attempt: u32) -> SpanId {
        span_id(&[self.execution.as_uuid().as_bytes(), step.as_str().as_bytes(), &attempt.to_be_bytes()])
    }

    /// The `traceparent` a call made in `span` carries.
    pub fn traceparent(&self, span: SpanId) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, span, u8::from(self.sampled))
    }

    /// The trace context of work started in `span` that continues this trace elsewhere, as a
    /// child execution started by a step does.
    pub fn context(&self, span: SpanId) -> TraceContext {
        TraceContext { trace_id: self.trace_id, parent: span, flags: u8::from(self.sampled), state: self.state.clone() }
    }
}

/// A span id from `parts`: FNV-1a over them (a zero byte between parts), mixed by
/// SplitMix64's finaliser; stable across processes and versions.
fn span_id(parts: &[&[u8]]) -> SpanId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in part.iter().chain(&[0u8]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    SpanId(hash.max(1).to_be_bytes())
}

/// What a span is to its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Work inside Baton.
    Internal,
    /// Serving a caller's request: an execution started with the caller's trace.
    Server,
    /// A call to a service: a step attempt.
    Client,
}

/// How a span ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpanStatus {
    /// It succeeded.
    Ok,
    /// It failed, and why.
    Error(String),
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    /// Text.
    Text(String),
    /// A whole number.
    Int(i64),
}

/// A finished span, ready for export.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// Its trace.
    pub trace_id: TraceId,
    /// Its id.
    pub span_id: SpanId,
    /// The span it belongs under; `None` for a trace's first span.
    pub parent: Option<SpanId>,
    /// The trace's `tracestate`.
    pub trace_state: Option<String>,
    /// What it is, e.g. `step charge`.
    pub name: String,
    /// What it is to its trace.
    pub kind: SpanKind,
    /// When it began.
    pub start: Timestamp,
    /// When it ended.
    pub end: Timestamp,
    /// Its attributes (`baton.workflow`, `baton.step`, ...).
    pub attributes: Vec<(&'static str, AttributeValue)>,
    /// How it ended.
    pub status: SpanStatus,
}

/// Builds the span of an execution or of one of its step attempts.
#[derive(Debug, Clone)]
pub struct SpanBuilder<'a> {
    /// The execution's trace.
    pub trace: &'a ExecutionTrace,
    /// The workflow it runs.
    pub workflow: &'a WorkflowName,
    /// The execution.
    pub execution: ExecutionId,
}

impl SpanBuilder<'_> {
    fn span(&self, name: String, kind: SpanKind, (start, end): (Timestamp, Timestamp)) -> SpanRecord {
        SpanRecord {
            trace_id: self.trace.trace_id,
            span_id: self.trace.root,
            parent: self.trace.parent,
            trace_state: self.trace.state.as_deref().map(str::to_owned),
            name,
            kind,
            start,
            end,
            attributes: vec![
                ("baton.workflow", AttributeValue::Text(self.workflow.to_string())),
                ("baton.execution", AttributeValue::Text(self.execution.to_string())),
            ],
            status: SpanStatus::Ok,
        }
    }

    /// The execution's span, from start to end; `outcome` is `completed`, `failed` or
    /// `cancelled`, with the error of the last two.
    pub fn execution(&self, times: (Timestamp, Timestamp), outcome: &str, error: Option<&str>) -> SpanRecord {
        let kind = if self.trace.parent.is_some() { SpanKind::Server } else { SpanKind::Internal };
        let mut span = self.span(format!("execution {}", self.workflow), kind, times);
        span.attributes.push(("baton.outcome", AttributeValue::Text(outcome.to_owned())));
        if let Some(error) = error {
            span.status = SpanStatus::Error(error.to_owned());
        }
        span
    }

    /// The span of attempt `attempt` of `step` at `service`; `outcome` is `succeeded`,
    /// `retryable` or `failed`, with the error of the last two.
    pub fn attempt(
        &self,
        step: &StepId,
        attempt: u32,
        service: &ServiceId,
        times: (Timestamp, Timestamp),
        outcome: &str,
        error: Option<&str>,
    ) -> SpanRecord {
        let mut span = self.span(format!("step {step}"), SpanKind::Client, times);
        span.span_id = self.trace.attempt(step, attempt);
        span.parent = Some(self.trace.root);
        span.attributes.extend([
            ("baton.step", AttributeValue::Text(step.to_string())),
            ("baton.service", AttributeValue::Text(service.to_string())),
            ("baton.attempt", AttributeValue::Int(i64::from(attempt))),
            ("baton.outcome", AttributeValue::Text(outcome.to_owned())),
        ]);
        if let Some(error) = error {
            span.status = SpanStatus::Error(error.to_owned());
        }
        span
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparents_parse_as_the_w3c_specification_says() {
        let context = TraceContext::parse(PARENT, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.parent().to_string(), "00f067aa0ba902b7");
        assert!(context.sampled());
        assert_eq!(context.traceparent(), PARENT);
        assert_eq!(context.tracestate(), Some("congo=t61rcWkgMzE"));
        // A later version may add fields, which are ignored.
        assert!(TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra", None).is_ok());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceContext::parse(bad, None).is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&context).unwrap();
        assert_eq!(serde_json::from_str::<TraceContext>(&json).unwrap(), context);
    }

    #[test]
    fn an_execution_continues_its_callers_trace_or_starts_its_own() {
        let execution = ExecutionId::generate();
        let own = ExecutionTrace::new(execution, None);
        assert_eq!(own.trace_id().0, *execution.as_uuid().as_bytes());
        assert_eq!(own.parent(), None);
        let caller = TraceContext::parse(PARENT, None).unwrap();
        let continued = ExecutionTrace::new(execution, Some(&caller));
        assert_eq!((continued.trace_id(), continued.parent()), (caller.trace_id(), Some(caller.parent())));
        // Ids derive from the execution, step and attempt: the same after a restart, distinct
        // across attempts and steps.
        let step = StepId::new("charge").unwrap();
        assert_eq!(continued.attempt(&step, 1), ExecutionTrace::new(execution, Some(&caller)).attempt(&step, 1));
        assert_ne!(continued.attempt(&step, 1), continued.attempt(&step, 2));
        assert_ne!(continued.attempt(&step, 1), continued.attempt(&StepId::new("ship").unwrap(), 1));
        assert_ne!(continued.attempt(&step, 1), continued.root());
        let header = continued.traceparent(continued.attempt(&step, 2));
        let parsed = TraceContext::parse(&header, None).unwrap();
        assert_eq!((parsed.trace_id(), parsed.parent()), (caller.trace_id(), continued.attempt(&step, 2)));
    }
}
