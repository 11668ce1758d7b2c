//! Requests Serverless Workflow documents write themselves (`call: http`), through the whole
//! orchestrator: they may not reach link-local or cloud metadata addresses, as registered
//! endpoints may not, unless the server allows it.

use baton::security::EndpointPolicy;
use baton::{Options, ServiceOrchestrator};
use baton_core::ExecutionState;
use serde_json::json;

const METADATA: &str = "document: {dsl: '1.0.3', namespace: default, name: steal, version: '1.0.0'}
do:
  - credentials:
      call: http
      with:
        method: get
        endpoint: http://169.254.169.254/latest/meta-data/iam/security-credentials/
";

#[tokio::test]
async fn a_workflow_cannot_make_the_server_fetch_cloud_metadata() {
    let orchestrator = ServiceOrchestrator::open(Options { supervisor: None, ..Options::default() }).await.unwrap();
    let engine = orchestrator.engine();
    let applied = engine.apply(METADATA).await.unwrap();
    let id = engine.start(&applied.name, Some(applied.version), json!({}), None).await.unwrap();
    let execution = engine.wait(id).await.unwrap();
    assert_eq!(execution.state, ExecutionState::Failed);
    let problem = execution.problem.expect("the fault's details");
    assert_eq!(problem.instance.as_deref(), Some("/do/0/credentials"));
    assert!(problem.detail.as_deref().unwrap_or_default().contains("link-local or cloud metadata"), "{problem:?}");
    assert_eq!(problem.title.as_deref(), Some("forbidden_endpoint"));
}

#[tokio::test]
async fn a_server_that_allows_link_local_addresses_lets_the_request_go() {
    let options =
        Options { supervisor: None, endpoints: EndpointPolicy { allow_link_local: true }, ..Options::default() };
    let orchestrator = ServiceOrchestrator::open(options).await.unwrap();
    let engine = orchestrator.engine();
    // Pointed at a link-local address nothing answers on here: the request is sent (and fails
    // to connect, or times out) rather than refused.
    let text = METADATA.replace("      call: http", "      timeout: {after: PT2S}\n      call: http");
    let applied = engine.apply(&text).await.unwrap();
    let id = engine.start(&applied.name, Some(applied.version), json!({}), None).await.unwrap();
    let execution = engine.wait(id).await.unwrap();
    let refused = execution.problem.as_ref().is_some_and(|p| p.title.as_deref() == Some("forbidden_endpoint"));
    assert!(!refused, "{execution:?}");
}
