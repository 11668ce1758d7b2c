//! `baton.v1.ExecutionService` over any [`Executions`], with `WatchExecution` as a server
//! stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use baton_core::api::EventStream;
use baton_core::api::{ExecutionQuery, StartExecution};
use baton_core::{Executions, Order, PageRequest, PageToken, TraceContext};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use prost::Message as _;

use crate::convert::{
    event_to_proto, execution_id, execution_state_from_proto, execution_summary_to_proto, execution_to_proto,
    idempotency_key, json_field, timestamp_from_proto, workflow_name,
};
use crate::error::api_status;
use crate::fit::{ENVELOPE_BYTES, fit_event, fit_execution};
use crate::forwarding::Incoming;
use crate::limits::{Limits, Stopping, clamp, shutting_down};
use crate::pb;

/// The events of a `WatchExecution` call.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchExecutionResponse, Status>> + Send>>;

/// The reason recorded when a cancel request gives none.
const DEFAULT_CANCEL_REASON: &str = "cancelled by request";

/// The execution service: converts, calls the executions port, converts back.
#[derive(Clone)]
pub struct ExecutionApi {
    executions: Arc<dyn Executions>,
    limits: Limits,
    stopping: Stopping,
}

impl std::fmt::Debug for ExecutionApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutionApi").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl ExecutionApi {
    /// Serves `executions` within `limits`.
    pub fn new(executions: Arc<dyn Executions>, limits: Limits) -> Self {
        Self { executions, limits, stopping: Stopping::never() }
    }

    /// Ends watch streams when `stopping` fires.
    pub(crate) fn stopping(self, stopping: Stopping) -> Self {
        Self { stopping, ..self }
    }

    /// `execution` with its tasks as proto, within the message limit.
    fn answer(&self, execution: &baton_core::Execution) -> pb::Execution {
        fit_execution(execution_to_proto(execution), self.budget())
    }

    /// The room for one execution or event in an answer.
    fn budget(&self) -> usize {
        self.limits.max_message_bytes.saturating_sub(ENVELOPE_BYTES)
    }
}

/// A watch as the response stream: the journal's events until the execution's terminal event
/// or an error, or until the server stops (then `UNAVAILABLE`). It ends in the same poll as
/// its last event, with no task or channel between it and the response, so that tonic finds the
/// end of the stream right after the terminal event and h2 sends the last DATA frame and the
/// trailers together. A client that drops the watch on reading that event then has nothing
/// more in flight on the stream: a late frame on a stream it has reset counts against its
/// connection in h2 (1,024 of them and h2 closes it, `too_many_internal_resets`).
struct Watching {
    events: EventStream,
    /// The largest event sent, in bytes; only an event stored before the write-time bounds
    /// can be larger, and it is fitted.
    budget: usize,
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
    ended: bool,
}

impl Watching {
    fn new(events: EventStream, budget: usize, mut stopping: Stopping) -> Self {
        Self { events, budget, stopping: Box::pin(async move { stopping.wait().await }), ended: false }
    }
}

impl Stream for Watching {
    type Item = Result<pb::WatchExecutionResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let item = match self.events.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(event))) => {
                self.ended = event.kind.is_terminal();
                Ok(pb::WatchExecutionResponse { event: Some(fit_event(event_to_proto(&event), self.budget)) })
            }
            Poll::Ready(Some(Err(error))) => {
                self.ended = true;
                Err(api_status(error))
            }
            Poll::Ready(None) => {
                self.ended = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {
                ready!(self.stopping.as_mut().poll(cx));
                self.ended = true;
                Err(shutting_down())
            }
        };
        Poll::Ready(Some(item))
    }
}

/// The caller's W3C trace context, from `traceparent` and `tracestate` metadata. One that does
/// not parse is ignored, as the W3C specification asks: the execution starts its own trace.
fn trace_context(metadata: &tonic::metadata::MetadataMap) -> Option<TraceContext> {
    let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
    TraceContext::parse(text("traceparent")?, text("tracestate")).ok()
}

#[tonic::async_trait]
impl pb::execution_service_server::ExecutionService for ExecutionApi {
    type WatchExecutionStream = WatchStream;

    async fn start_execution(
        &self,
        request: Request<pb::StartExecutionRequest>,
    ) -> Result<Response<pb::StartExecutionResponse>, Status> {
        let trace = trace_context(request.metadata());
        let request = request.into_inner();
        let workflow = workflow_name("workflow", &request.workflow)?;
        if request.version == Some(0) {
            return Err(crate::convert::invalid("version", "versions start at 1"));
        }
        let input = json_field("input_json", &request.input_json, serde_json::json!({}))?;
        let idempotency_key = request.idempotency_key.as_deref().map(idempotency_key).transpose()?;
        let started = self
            .executions
            .start(StartExecution { workflow, version: request.version, input, idempotency_key, trace })
            .await
            .map_err(api_status)?;
        Ok(Response::new(pb::StartExecutionResponse {
            execution: Some(self.answer(&started.execution)),
            existing: started.existing,
        }))
    }

    async fn get_execution(
        &self,
        request: Request<pb::GetExecutionRequest>,
    ) -> Result<Response<pb::GetExecutionResponse>, Status> {
        let incoming = Incoming::from_metadata(request.metadata());
        let id = execution_id("id", &request.into_inner().id)?;
        let execution = incoming.scope(self.executions.get(id)).await.map_err(api_status)?;
        Ok(Response::new(pb::GetExecutionResponse { execution: Some(self.answer(&execution)) }))
    }

    async fn list_executions(
        &self,
        request: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        let request = request.into_inner();
        let workflow = match request.workflow.as_str() {
            "" => None,
            name => Some(workflow_name("workflow", name)?),
        };
        let states = request
            .states
            .iter()
            .enumerate()
            .map(|(i, &state)| execution_state_from_proto(&format!("states[{i}]"), state))
            .collect::<Result<Vec<_>, _>>()?;
        let query = ExecutionQuery {
            workflow,
            states,
            created_from: request.created_after.map(|t| timestamp_from_proto("created_after", t)).transpose()?,
            created_before: request.created_before.map(|t| timestamp_from_proto("created_before", t)).transpose()?,
            id_prefix: match request.id_prefix.as_str() {
                "" => None,
                text => Some(baton_core::IdPrefix::new(text).map_err(|e| Status::invalid_argument(e.to_string()))?),
            },
            idempotency_key: match request.idempotency_key.as_str() {
                "" => None,
                key => Some(idempotency_key(key)?),
            },
        };
        let token = match request.page_token.as_str() {
            "" => None,
            text => {
                let token = PageToken::from_text(text.to_owned());
                // Checked here so that every port refuses foreign tokens the same way.
                token.position().map_err(|e| Status::invalid_argument(e.to_string()))?;
                Some(token)
            }
        };
        let limit = clamp(request.page_size, self.limits.default_page_size, self.limits.max_page_size);
        let page = PageRequest { limit: u32::try_from(limit).unwrap_or(u32::MAX), order: Order::NewestFirst, token };
        let page = self.executions.list(query.clone(), page).await.map_err(api_status)?;
        // A page ends before it would pass the message limit, with a token to go on from its
        // last execution; a port may filter several states only partly (see
        // `ExecutionQuery::store_filter`).
        let budget = self.budget();
        let mut executions = Vec::new();
        let (mut used, mut next) = (0, page.next);
        let mut last = None;
        for execution in page.executions.iter().filter(|e| query.matches(e)) {
            let summary = fit_execution(execution_summary_to_proto(execution), budget);
            let size = summary.encoded_len();
            let framed = 1 + prost::encoding::encoded_len_varint(size as u64) + size;
            // One execution always fits: its input, output and error are bounded when written,
            // and one stored before those bounds is fitted.
            if used + framed > budget
                && let Some(last) = last
            {
                next = Some(last);
                break;
            }
            used += framed;
            executions.push(summary);
            last = Some(PageToken::at(execution.created_at, execution.id));
        }
        Ok(Response::new(pb::ListExecutionsResponse {
            executions,
            next_page_token: next.map(|t| t.as_str().to_owned()).unwrap_or_default(),
        }))
    }

    async fn pause_execution(
        &self,
        request: Request<pb::PauseExecutionRequest>,
    ) -> Result<Response<pb::PauseExecutionResponse>, Status> {
        let incoming = Incoming::from_metadata(request.metadata());
        let id = execution_id("id", &request.into_inner().id)?;
        let execution = incoming.scope(self.executions.pause(id)).await.map_err(api_status)?;
        Ok(Response::new(pb::PauseExecutionResponse { execution: Some(self.answer(&execution)) }))
    }

    async fn resume_execution(
        &self,
        request: Request<pb::ResumeExecutionRequest>,
    ) -> Result<Response<pb::ResumeExecutionResponse>, Status> {
        let incoming = Incoming::from_metadata(request.metadata());
        let id = execution_id("id", &request.into_inner().id)?;
        let execution = incoming.scope(self.executions.resume(id)).await.map_err(api_status)?;
        Ok(Response::new(pb::ResumeExecutionResponse { execution: Some(self.answer(&execution)) }))
    }

    async fn cancel_execution(
        &self,
        request: Request<pb::CancelExecutionRequest>,
    ) -> Result<Response<pb::CancelExecutionResponse>, Status> {
        let incoming = Incoming::from_metadata(request.metadata());
        let request = request.into_inner();
        let id = execution_id("id", &request.id)?;
        let reason = if request.reason.trim().is_empty() { DEFAULT_CANCEL_REASON.to_owned() } else { request.reason };
        let execution = incoming.scope(self.executions.cancel(id, reason)).await.map_err(api_status)?;
        Ok(Response::new(pb::CancelExecutionResponse { execution: Some(self.answer(&execution)) }))
    }

    async fn signal_execution(
        &self,
        request: Request<pb::SignalExecutionRequest>,
    ) -> Result<Response<pb::SignalExecutionResponse>, Status> {
        let incoming = Incoming::from_metadata(request.metadata());
        let request = request.into_inner();
        let id = execution_id("id", &request.id)?;
        let data = json_field("data_json", &request.data_json, serde_json::Value::Null)?;
        let execution = incoming.scope(self.executions.signal(id, request.name, data)).await.map_err(api_status)?;
        Ok(Response::new(pb::SignalExecutionResponse { execution: Some(self.answer(&execution)) }))
    }

    async fn watch_execution(
        &self,
        request: Request<pb::WatchExecutionRequest>,
    ) -> Result<Response<Self::WatchExecutionStream>, Status> {
        let incoming = Incoming::from_metadata(request.metadata());
        let request = request.into_inner();
        let id = execution_id("id", &request.id)?;
        let events = incoming.scope(self.executions.watch(id, request.from_sequence)).await.map_err(api_status)?;
        Ok(Response::new(Box::pin(Watching::new(events, self.budget(), self.stopping.clone())) as WatchStream))
    }
}

#[cfg(test)]
mod tests {
    use baton_core::{Event, EventKind, ExecutionId};
    use tokio_stream::StreamExt as _;

    use super::*;

    fn event(execution: ExecutionId, sequence: u64, kind: EventKind) -> baton_core::api::ApiResult<Event> {
        Ok(Event { execution, sequence, at: Default::default(), kind })
    }

    /// The next item if there is one without waiting; `None` when the stream would wait.
    fn ready<S: Stream + Unpin>(stream: &mut S) -> Option<Option<S::Item>> {
        let waker = std::task::Waker::noop();
        match Pin::new(stream).poll_next(&mut Context::from_waker(waker)) {
            Poll::Ready(item) => Some(item),
            Poll::Pending => None,
        }
    }

    #[test]
    fn the_watch_ends_in_the_same_poll_as_its_terminal_event() {
        let id = ExecutionId::generate();
        // An event source that would keep the stream open after the end, as a slow one might.
        let events = tokio_stream::iter([
            event(id, 1, EventKind::Started { input: serde_json::json!({}) }),
            event(id, 2, EventKind::Completed { output: serde_json::json!(1) }),
        ])
        .chain(tokio_stream::pending());
        let mut watching = Watching::new(Box::pin(events), usize::MAX, Stopping::never());
        assert!(matches!(ready(&mut watching), Some(Some(Ok(_)))));
        let last = ready(&mut watching).expect("ready").expect("an item").expect("an event");
        assert!(matches!(last.event.and_then(|e| e.kind), Some(pb::event::Kind::Completed(_))));
        assert!(matches!(ready(&mut watching), Some(None)), "ended with the terminal event");
    }

    #[test]
    fn the_watch_ends_after_an_error_and_as_unavailable_when_the_server_stops() {
        let failing = tokio_stream::iter([Err(baton_core::api::ApiError::Unavailable("the store is gone".to_owned()))])
            .chain(tokio_stream::pending());
        let mut watching = Watching::new(Box::pin(failing), usize::MAX, Stopping::never());
        assert!(matches!(ready(&mut watching), Some(Some(Err(_)))));
        assert!(matches!(ready(&mut watching), Some(None)));

        let (stop, stopping) = Stopping::channel();
        let mut watching = Watching::new(Box::pin(tokio_stream::pending()), usize::MAX, stopping);
        assert!(ready(&mut watching).is_none(), "waits for events");
        stop.send(true).unwrap();
        let status = ready(&mut watching).expect("ready").expect("an item").expect_err("an error");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(matches!(ready(&mut watching), Some(None)));
    }
}
