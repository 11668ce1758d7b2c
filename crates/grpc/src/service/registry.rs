//! `baton.v1.RegistryService` over any [`ServiceDirectory`].

use std::sync::Arc;

use baton_core::ServiceDirectory;
use tonic::{Request, Response, Status};

use crate::convert::{
    candidate_to_proto, invalid, requirements_from_proto, service_id, spec_from_proto, status_to_proto, view_to_proto,
};
use crate::error::api_status;
use crate::limits::{Limits, clamp};
use crate::pb;

/// The registry service: converts, calls the directory, converts back.
#[derive(Clone)]
pub struct RegistryApi {
    directory: Arc<dyn ServiceDirectory>,
    limits: Limits,
}

impl std::fmt::Debug for RegistryApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryApi").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl RegistryApi {
    /// Serves `directory` within `limits`.
    pub fn new(directory: Arc<dyn ServiceDirectory>, limits: Limits) -> Self {
        Self { directory, limits }
    }
}

#[tonic::async_trait]
impl pb::registry_service_server::RegistryService for RegistryApi {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let spec = request.into_inner().spec.ok_or_else(|| invalid("spec", "must be set"))?;
        let spec = spec_from_proto(spec)?;
        let id = spec.id().clone();
        let outcome = match self.directory.register(spec).await.map_err(api_status)? {
            baton_core::Registration::Created => pb::RegisterOutcome::Created,
            baton_core::Registration::Updated => pb::RegisterOutcome::Updated,
        };
        // A concurrent deregistration may win; the client then sees the service as it is: gone.
        let service = self.directory.get(&id).map_err(api_status)?;
        Ok(Response::new(pb::RegisterResponse { outcome: outcome as i32, service: Some(view_to_proto(&service)) }))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let id = service_id("id", &request.into_inner().id)?;
        self.directory.deregister(&id).await.map_err(api_status)?;
        Ok(Response::new(pb::DeregisterResponse {}))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let id = service_id("id", &request.into_inner().id)?;
        let status = self.directory.heartbeat(&id).await.map_err(api_status)?;
        Ok(Response::new(pb::HeartbeatResponse { status: Some(status_to_proto(&status)) }))
    }

    async fn get_service(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::GetServiceResponse>, Status> {
        let id = service_id("id", &request.into_inner().id)?;
        let service = self.directory.get(&id).map_err(api_status)?;
        Ok(Response::new(pb::GetServiceResponse { service: Some(view_to_proto(&service)) }))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let request = request.into_inner();
        let size = clamp(request.page_size, self.limits.default_page_size, self.limits.max_page_size);
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(service_id("page_token", token)?),
        };
        let page = self.directory.list(after.as_ref(), size);
        Ok(Response::new(pb::ListServicesResponse {
            services: page.services.iter().map(view_to_proto).collect(),
            next_page_token: page.next_after.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }

    async fn find_services(
        &self,
        request: Request<pb::FindServicesRequest>,
    ) -> Result<Response<pb::FindServicesResponse>, Status> {
        let request = request.into_inner();
        let requirements = request.requirements.ok_or_else(|| invalid("requirements", "must be set"))?;
        let requirements = requirements_from_proto(requirements)?;
        let limit = clamp(request.limit, self.limits.default_find_limit, self.limits.max_find_limit);
        let found = self.directory.find(&requirements, limit).map_err(api_status)?;
        Ok(Response::new(pb::FindServicesResponse {
            candidates: found.candidates.iter().map(candidate_to_proto).collect(),
            total_matched: found.total as u64,
        }))
    }
}
