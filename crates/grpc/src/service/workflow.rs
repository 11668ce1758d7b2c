//! `baton.v1.WorkflowService` over any [`WorkflowCatalog`].

use std::sync::Arc;

use baton_core::WorkflowCatalog;
use baton_core::api::{DefinitionFormat, DefinitionQuery};
use tonic::{Request, Response, Status};

use crate::convert::{
    definition_format_from_proto, definition_format_to_proto, definition_summary_to_proto, invalid, workflow_name,
};
use crate::error::api_status;
use crate::limits::{Limits, clamp};
use crate::pb;

/// The workflow service: converts, calls the catalog, converts back.
#[derive(Clone)]
pub struct WorkflowApi {
    catalog: Arc<dyn WorkflowCatalog>,
    limits: Limits,
}

impl std::fmt::Debug for WorkflowApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowApi").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl WorkflowApi {
    /// Serves `catalog` within `limits`.
    pub fn new(catalog: Arc<dyn WorkflowCatalog>, limits: Limits) -> Self {
        Self { catalog, limits }
    }
}

#[tonic::async_trait]
impl pb::workflow_service_server::WorkflowService for WorkflowApi {
    async fn apply_definition(
        &self,
        request: Request<pb::ApplyDefinitionRequest>,
    ) -> Result<Response<pb::ApplyDefinitionResponse>, Status> {
        let request = request.into_inner();
        if request.source.trim().is_empty() {
            return Err(invalid("source", "must not be empty"));
        }
        let format = definition_format_from_proto("format", request.format)?;
        let applied = self.catalog.apply(request.source, format).await.map_err(api_status)?;
        let outcome = if applied.created { pb::ApplyOutcome::Created } else { pb::ApplyOutcome::Unchanged };
        Ok(Response::new(pb::ApplyDefinitionResponse {
            definition: Some(definition_summary_to_proto(&applied.definition)),
            outcome: outcome as i32,
        }))
    }

    async fn get_definition(
        &self,
        request: Request<pb::GetDefinitionRequest>,
    ) -> Result<Response<pb::GetDefinitionResponse>, Status> {
        let request = request.into_inner();
        let name = workflow_name("name", &request.name)?;
        if request.version == Some(0) {
            return Err(invalid("version", "versions start at 1"));
        }
        let detail = self.catalog.get(name, request.version).await.map_err(api_status)?;
        // A catalog that does not keep the text answers with the canonical JSON form.
        let (format, source) = match detail.source {
            Some(source) => (source.format, source.text),
            None => (DefinitionFormat::Json, detail.definition.to_string()),
        };
        Ok(Response::new(pb::GetDefinitionResponse {
            definition: Some(definition_summary_to_proto(&detail.summary)),
            source,
            format: definition_format_to_proto(format) as i32,
            definition_json: detail.definition.to_string(),
        }))
    }

    async fn list_definitions(
        &self,
        request: Request<pb::ListDefinitionsRequest>,
    ) -> Result<Response<pb::ListDefinitionsResponse>, Status> {
        let request = request.into_inner();
        let name = match request.name.as_str() {
            "" => None,
            name => Some(workflow_name("name", name)?),
        };
        let query = DefinitionQuery {
            name,
            page_token: Some(request.page_token).filter(|t| !t.is_empty()),
            limit: clamp(request.page_size, self.limits.default_page_size, self.limits.max_page_size),
        };
        let page = self.catalog.list(query).await.map_err(api_status)?;
        Ok(Response::new(pb::ListDefinitionsResponse {
            definitions: page.definitions.iter().map(definition_summary_to_proto).collect(),
            next_page_token: page.next.unwrap_or_default(),
        }))
    }
}
