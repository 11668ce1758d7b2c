//! Forwarding between cluster nodes that serve mutual TLS with bearer tokens: two real `baton
//! serve --cluster` nodes on one throwaway PostgreSQL database, each with a node certificate
//! (server and client usage) from one CA, requiring client certificates from that CA. Pause,
//! Resume and Cancel sent to the node that does not run an execution reach its owner over TLS,
//! the forwarding node presenting its certificate and its token.

mod support;

use std::time::Duration;

use baton_examples::pki::TestPki;
use baton_grpc::pb;
use baton_grpc::pb::execution_service_client::ExecutionServiceClient;
use baton_store::testing::{PgCluster, until};
use support::cluster::{Authed, HOLD, LEASE, TOKEN, bearer};
use support::{ServerProcess, sample, scrape};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// A node serving mutual TLS, and a client with the test's client certificate and the token.
async fn node(
    url: &str,
    name: &str,
    dir: &std::path::Path,
    pki: &TestPki,
) -> (ServerProcess, ExecutionServiceClient<Authed>) {
    let write = |file: &str, text: &str| {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (cert, key) = (write("node.pem", &pki.node_cert_pem), write("node.key", &pki.node_key_pem));
    let (ca, tokens) = (write("ca.pem", &pki.ca_pem), write("tokens", &format!("{TOKEN}\n")));
    let args = [
        "--store",
        url,
        "--cluster",
        "--node-id",
        name,
        "--lease-ttl",
        LEASE,
        "--partitions",
        "8",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca,
        "--auth-token-file",
        &tokens,
    ];
    let client_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .identity(Identity::from_pem(&pki.client_cert_pem, &pki.client_key_pem));
    let process = ServerProcess::start_tls(&dir.join(name), &args, client_tls).await;
    let intercept: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> = bearer;
    let client = ExecutionServiceClient::with_interceptor(process.channel().await, intercept);
    (process, client)
}

fn state(execution: Option<pb::Execution>) -> pb::ExecutionState {
    pb::ExecutionState::try_from(execution.unwrap().state).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_forward_calls_to_each_other_over_mutual_tls() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = cluster.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("cluster");
    let (a_process, mut a) = node(&url, "a", dir.path(), &pki).await;
    let (b_process, mut b) = node(&url, "b", dir.path(), &pki).await;
    let apply = pb::ApplyDefinitionRequest { source: HOLD.to_owned(), format: pb::DefinitionFormat::Yaml as i32 };
    let intercept: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> = bearer;
    pb::workflow_service_client::WorkflowServiceClient::with_interceptor(a_process.channel().await, intercept)
        .apply_definition(apply)
        .await
        .unwrap();
    // Both own their share before anything starts, so what b starts stays b's.
    until("an even share of the partitions", Duration::from_secs(30), async || {
        let status = baton_cluster::status(&url).await.unwrap();
        status.nodes.len() == 2 && status.nodes.iter().all(|n| n.partitions == 4)
    })
    .await;

    let start = pb::StartExecutionRequest { workflow: "hold".to_owned(), ..Default::default() };
    let held = b.start_execution(start).await.unwrap().into_inner().execution.unwrap().id;
    let on = |id: &str| pb::PauseExecutionRequest { id: id.to_owned() };
    let paused = a.pause_execution(on(&held)).await.unwrap().into_inner().execution;
    assert_eq!(state(paused), pb::ExecutionState::Paused, "paused by b, reached over TLS");
    let resume = pb::ResumeExecutionRequest { id: held.clone() };
    let resumed = a.resume_execution(resume).await.unwrap().into_inner().execution;
    assert_eq!(state(resumed), pb::ExecutionState::Running);
    let cancel = pb::CancelExecutionRequest { id: held.clone(), reason: "sent to a".to_owned() };
    let cancelled = a.cancel_execution(cancel).await.unwrap().into_inner().execution;
    assert_eq!(state(cancelled), pb::ExecutionState::Cancelled);
    let seen_by_b = b.get_execution(pb::GetExecutionRequest { id: held }).await.unwrap().into_inner().execution;
    assert_eq!(state(seen_by_b), pb::ExecutionState::Cancelled, "the owner ran the cancel");
    let forwarded = sample(&scrape(a_process.metrics).await, "baton_cluster_forwarded_calls_total");
    assert_eq!(forwarded, Some(3.0), "pause, resume and cancel went to b");
    drop((a_process, b_process));
}
