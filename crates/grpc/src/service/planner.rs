//! `baton.v1.PlannerService` over any [`Planning`].

use std::sync::Arc;

use baton_core::Planning;
use tonic::{Request, Response, Status};

use crate::convert::{goal_from_proto, invalid, plan_to_proto};
use crate::error::api_status;
use crate::pb;

/// The planner service: converts the goal, plans off the async runtime, converts the plan back.
#[derive(Clone)]
pub struct PlannerApi {
    planning: Arc<dyn Planning>,
}

impl std::fmt::Debug for PlannerApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlannerApi").finish_non_exhaustive()
    }
}

impl PlannerApi {
    /// Serves plans from `planning`.
    pub fn new(planning: Arc<dyn Planning>) -> Self {
        Self { planning }
    }
}

#[tonic::async_trait]
impl pb::planner_service_server::PlannerService for PlannerApi {
    async fn plan(&self, request: Request<pb::PlanRequest>) -> Result<Response<pb::PlanResponse>, Status> {
        let goal = request.into_inner().goal.ok_or_else(|| invalid("goal", "must be set"))?;
        let goal = goal_from_proto(goal)?;
        let planning = Arc::clone(&self.planning);
        // Composition is CPU-bound (and may rebuild the catalog): it must not hold up the
        // runtime's workers, which serve every other call.
        let plan = tokio::task::spawn_blocking(move || planning.plan(&goal))
            .await
            .map_err(|e| Status::internal(format!("planning stopped: {e}")))?
            .map_err(api_status)?;
        Ok(Response::new(pb::PlanResponse { plan: Some(plan_to_proto(&plan)) }))
    }
}
