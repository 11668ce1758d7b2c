//! A real tonic server on 127.0.0.1:0 over the in-memory orchestrator (a `LivePlanner` over a
//! fixed catalog, the in-memory catalog and executions), driven by a real tonic client:
//! plan-and-start, plan-and-wait, a wait that runs out, and bad or unsatisfiable goals.

mod common;

use std::sync::Arc;
use std::time::Duration;

use baton_core::fakes::{FixedCatalog, InMemoryDirectory};
use baton_core::{EventKind, Planning, ServiceSpec, TaxonomyBuilder};
use baton_grpc::pb::execution_service_client::ExecutionServiceClient;
use baton_grpc::pb::orchestrator_service_client::OrchestratorServiceClient;
use baton_grpc::{Config, pb};
use common::{Fakes, assert_status};
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

struct Harness {
    server: common::Running,
    fakes: Fakes,
    client: OrchestratorServiceClient<Channel>,
    executions: ExecutionServiceClient<Channel>,
}

fn spec(id: &str, inputs: &[&str], outputs: &[&str]) -> ServiceSpec {
    let text = json!({
        "id": id,
        "endpoint": {"protocol": "http", "url": format!("http://127.0.0.1:1/{id}")},
        "inputs": inputs,
        "outputs": outputs,
        "qos": {"latency_p50_ms": 5, "latency_p99_ms": 10}
    });
    ServiceSpec::from_json(&text.to_string()).unwrap()
}

/// Services `bill: order -> invoice` and `file: invoice -> receipt`.
async fn start() -> Harness {
    let mut taxonomy = TaxonomyBuilder::default();
    for concept in ["order", "invoice", "receipt"] {
        taxonomy.add(concept, None).unwrap();
    }
    let catalog = FixedCatalog::new([spec("bill", &["order"], &["invoice"]), spec("file", &["invoice"], &["receipt"])]);
    let planner: Arc<dyn Planning> =
        Arc::new(baton_planner::LivePlanner::new(Arc::new(taxonomy.build().unwrap()), Arc::new(catalog)));
    let fakes = Fakes::new(Arc::clone(&planner));
    let server =
        common::serve(fakes.backends(Arc::new(InMemoryDirectory::default()), planner), Config::default()).await;
    let client = OrchestratorServiceClient::new(server.channel.clone());
    let executions = ExecutionServiceClient::new(server.channel.clone());
    Harness { server, fakes, client, executions }
}

fn goal(provided: &[&str], wanted: &[&str]) -> pb::Goal {
    pb::Goal {
        provided: provided.iter().map(|s| s.to_string()).collect(),
        wanted: wanted.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn orchestrate(wait: bool) -> pb::OrchestrateRequest {
    pb::OrchestrateRequest { goal: Some(goal(&["order"], &["receipt"])), input_json: r#"{"order": 1}"#.into(), wait }
}

#[tokio::test]
async fn a_goal_is_planned_and_started() {
    let Harness { server, fakes: _fakes, mut client, mut executions } = start().await;
    let answer = client.orchestrate(orchestrate(false)).await.unwrap().into_inner();
    let plan = answer.plan.unwrap();
    let services: Vec<&str> = plan.tasks.iter().map(|t| t.service.as_str()).collect();
    assert_eq!(services, ["bill", "file"]);
    assert_eq!(answer.state, pb::ExecutionState::Running as i32);
    assert_eq!((answer.output_json, answer.error), (None, None));

    // The execution is an ordinary one: ExecutionService knows it, with a task per plan task.
    let got = executions.get_execution(pb::GetExecutionRequest { id: answer.execution_id.clone() }).await.unwrap();
    let got = got.into_inner().execution.unwrap();
    assert!(got.workflow.starts_with("goal-"), "{}", got.workflow);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&got.input_json).unwrap(), json!({"order": 1}));
    let steps: Vec<&str> = got.tasks.iter().map(|t| t.step.as_str()).collect();
    assert_eq!(steps.len(), 2);
    // The same goal again reuses the workflow version and starts another execution.
    let again = client.orchestrate(orchestrate(false)).await.unwrap().into_inner();
    assert_ne!(again.execution_id, answer.execution_id);
    server.shutdown().await;
}

#[tokio::test]
async fn a_waited_goal_answers_with_the_end_of_its_run() {
    let Harness { server, fakes, mut client, executions: _executions } = start().await;
    fakes.orchestrator.finish_runs_with(Some(EventKind::Completed { output: json!({"receipt": "r-1"}) }));
    let answer = client.orchestrate(orchestrate(true)).await.unwrap().into_inner();
    assert_eq!(answer.state, pb::ExecutionState::Completed as i32);
    let output: serde_json::Value = serde_json::from_str(answer.output_json.as_deref().unwrap()).unwrap();
    assert_eq!(output, json!({"receipt": "r-1"}));

    fakes.orchestrator.finish_runs_with(Some(EventKind::Failed { error: "file is down".into(), problem: None }));
    let failed = client.orchestrate(orchestrate(true)).await.unwrap().into_inner();
    assert_eq!((failed.state, failed.error.as_deref()), (pb::ExecutionState::Failed as i32, Some("file is down")));
    server.shutdown().await;
}

#[tokio::test]
async fn a_wait_that_runs_out_names_the_execution_to_follow() {
    let Harness { server, fakes: _fakes, mut client, mut executions } = start().await;
    let mut request = tonic::Request::new(orchestrate(true));
    request.set_timeout(Duration::from_secs(5));
    let status = client.orchestrate(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("is still running after waiting"), "{}", status.message());
    // The execution it names exists and runs on.
    let id = status.message().split_whitespace().nth(1).unwrap().to_owned();
    let got = executions.get_execution(pb::GetExecutionRequest { id }).await.unwrap().into_inner();
    assert_eq!(got.execution.unwrap().state, pb::ExecutionState::Running as i32);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_and_unsatisfiable_goals_get_typed_codes() {
    let Harness { server, fakes: _fakes, mut client, mut executions } = start().await;
    let no_goal = pb::OrchestrateRequest { goal: None, input_json: String::new(), wait: false };
    assert_status(client.orchestrate(no_goal).await, Code::InvalidArgument, "goal: must be set");
    let bad_input = pb::OrchestrateRequest { input_json: "[1,".into(), ..orchestrate(false) };
    assert_status(client.orchestrate(bad_input).await, Code::InvalidArgument, "input_json: not valid JSON");
    let nothing_wanted = pb::OrchestrateRequest { goal: Some(goal(&["order"], &[])), ..orchestrate(false) };
    assert_status(client.orchestrate(nothing_wanted).await, Code::InvalidArgument, "goal.wanted");
    let bad_objective = pb::OrchestrateRequest {
        goal: Some(pb::Goal { objective: 42, ..goal(&["order"], &["receipt"]) }),
        ..orchestrate(false)
    };
    assert_status(client.orchestrate(bad_objective).await, Code::InvalidArgument, "goal.objective");
    let unreachable = pb::OrchestrateRequest { goal: Some(goal(&["order"], &["refund"])), ..orchestrate(false) };
    assert_status(client.orchestrate(unreachable).await, Code::FailedPrecondition, "refund");

    // Nothing above started anything.
    let all = executions.list_executions(pb::ListExecutionsRequest::default()).await.unwrap().into_inner();
    assert!(all.executions.is_empty());
    server.shutdown().await;
}
