//! `baton.v1.OrchestratorService` over any [`Orchestrating`].

use std::sync::Arc;
use std::time::Duration;

use baton_core::Orchestrating;
use baton_core::api::Orchestrate;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::convert::{execution_state_to_proto, goal_from_proto, invalid, json_field, plan_to_proto};
use crate::error::api_status;
use crate::limits::Limits;
use crate::pb;

/// The orchestrator service: plans and starts a goal, and with `wait` waits for its end
/// within the call's deadline.
#[derive(Clone)]
pub struct OrchestratorApi {
    orchestrating: Arc<dyn Orchestrating>,
    limits: Limits,
}

impl std::fmt::Debug for OrchestratorApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestratorApi").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl OrchestratorApi {
    /// Serves `orchestrating` within `limits`.
    pub fn new(orchestrating: Arc<dyn Orchestrating>, limits: Limits) -> Self {
        Self { orchestrating, limits }
    }

    /// How long to wait for the execution: up to the client's deadline less a margin to
    /// answer in (tonic cuts the call at the deadline itself), and never over the limit.
    fn wait(&self, metadata: &MetadataMap) -> Duration {
        match deadline(metadata) {
            Some(deadline) => {
                let margin = (deadline / 10).clamp(Duration::from_millis(5), Duration::from_secs(1));
                deadline.saturating_sub(margin).min(self.limits.max_wait)
            }
            None => self.limits.max_wait,
        }
    }
}

/// The call's deadline from the `grpc-timeout` header: digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`), as the gRPC HTTP/2 protocol writes it; `None` when absent or malformed.
fn deadline(metadata: &MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[tonic::async_trait]
impl pb::orchestrator_service_server::OrchestratorService for OrchestratorApi {
    async fn orchestrate(
        &self,
        request: Request<pb::OrchestrateRequest>,
    ) -> Result<Response<pb::OrchestrateResponse>, Status> {
        let wait = self.wait(request.metadata());
        let request = request.into_inner();
        let goal = goal_from_proto(request.goal.ok_or_else(|| invalid("goal", "must be set"))?)?;
        let input = json_field("input_json", &request.input_json, serde_json::json!({}))?;
        let wait = request.wait.then_some(wait);
        let done = self.orchestrating.orchestrate(Orchestrate { goal, input, wait }).await.map_err(api_status)?;
        let execution = &done.execution;
        if let Some(waited) = wait
            && !execution.state.is_terminal()
        {
            return Err(Status::deadline_exceeded(format!(
                "execution {} of workflow {:?} is still {} after waiting {waited:?}; follow it with \
                 ExecutionService.WatchExecution",
                execution.id,
                done.workflow.as_str(),
                execution.state
            )));
        }
        Ok(Response::new(pb::OrchestrateResponse {
            plan: Some(plan_to_proto(&done.plan)),
            execution_id: execution.id.to_string(),
            state: execution_state_to_proto(execution.state) as i32,
            output_json: execution.output.as_ref().map(ToString::to_string),
            error: execution.error.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_read_every_unit_and_refuse_garbage() {
        let check = |header: &str, expected: Option<Duration>| {
            let mut metadata = MetadataMap::new();
            metadata.insert("grpc-timeout", header.parse().unwrap());
            assert_eq!(deadline(&metadata), expected, "{header:?}");
        };
        check("2H", Some(Duration::from_secs(7200)));
        check("3M", Some(Duration::from_secs(180)));
        check("4S", Some(Duration::from_secs(4)));
        check("500m", Some(Duration::from_millis(500)));
        check("7u", Some(Duration::from_micros(7)));
        check("9n", Some(Duration::from_nanos(9)));
        check("5x", None);
        check("m", None);
        check("-1S", None);
        assert_eq!(deadline(&MetadataMap::new()), None);

        let api = OrchestratorApi::new(Arc::new(Never), Limits::default());
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(api.wait(&metadata), Duration::from_millis(1800));
        assert_eq!(api.wait(&MetadataMap::new()), Limits::default().max_wait);
    }

    struct Never;

    impl Orchestrating for Never {
        fn orchestrate(
            &self,
            _: Orchestrate,
        ) -> baton_core::BoxFuture<'_, baton_core::ApiResult<baton_core::api::Orchestration>> {
            Box::pin(std::future::pending())
        }
    }
}
