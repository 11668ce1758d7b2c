//! `baton serve` on a disk that fills up and empties again: a 32 MiB tmpfs in a user and mount
//! namespace of the server's own (`unshare`, so no root is needed where unprivileged user
//! namespaces are allowed), filled to the last byte by a file written through
//! `/proc/<pid>/root`. While it is full the server says so in its log, its health
//! (`NOT_SERVING`) and its metrics, refuses new executions with `RESOURCE_EXHAUSTED` naming the
//! data directory, answers a pause with the lack of space (not `FAILED_PRECONDITION`), and
//! holds a run whose step has answered; once the file is gone it serves again and the run ends.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use axum::routing::post;
use baton_grpc::pb;
use baton_store::testing::until;
use support::{Clients, ServerProcess, sample, scrape};
use tokio::sync::watch;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// The health of the whole server.
async fn health(server: &ServerProcess) -> Option<ServingStatus> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let answer = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.ok()?;
    ServingStatus::try_from(answer.into_inner().status).ok()
}

/// A service that answers `{"done": true}` once `open` says so.
async fn gated_service(open: watch::Receiver<bool>) -> String {
    let router = axum::Router::new().route(
        "/",
        post(move || {
            let mut open = open.clone();
            async move {
                let _ = open.wait_for(|open| *open).await;
                axum::Json(serde_json::json!({"done": true}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_said_refuses_new_work_and_everything_goes_on_once_it_has_room() {
    let mount = tempfile::tempdir().unwrap();
    let mount_path = mount.path().to_str().unwrap().to_owned();
    let data = mount.path().join("data");
    let script = r#"mount -t tmpfs -o size=32m tmpfs "$0" && exec "$@""#;
    let wrapper = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, mount_path.as_str()];
    let mut server = ServerProcess::start_under(&wrapper, &data, &["--min-free-disk-mib", "2"]).await;
    // The server's view of the tmpfs: the test's own view of the directory is the host's.
    let disk = PathBuf::from(format!("/proc/{}/root{}", server.pid(), mount_path));
    assert!(disk.join("data/baton.redb").exists(), "the data directory is on the tmpfs");

    let mut clients = Clients::new(server.channel().await);
    let (open, gate) = watch::channel(false);
    let url = gated_service(gate).await;
    let spec = pb::ServiceSpec {
        id: "gated".to_owned(),
        endpoint: Some(pb::Endpoint { kind: Some(pb::endpoint::Kind::Http(pb::endpoint::Http { url })) }),
        capabilities: vec!["wait".to_owned()],
        ..Default::default()
    };
    clients.registry.register(pb::RegisterRequest { spec: Some(spec) }).await.unwrap();
    clients.apply("name: held\nsteps:\n  - {id: call, service: gated}\noutput: \"${ .steps.call.output }\"\n").await;
    let start = || pb::StartExecutionRequest { workflow: "held".to_owned(), ..Default::default() };
    let held = clients.executions.start_execution(start()).await.unwrap().into_inner().execution.unwrap().id;
    let page = scrape(server.metrics).await;
    assert_eq!(sample(&page, "baton_disk_full"), Some(0.0), "{page}");

    let filler = baton_store::testing::fill_disk(&disk);
    until("health says NOT_SERVING", Duration::from_secs(30), async || {
        health(&server).await == Some(ServingStatus::NotServing)
    })
    .await;
    let page = scrape(server.metrics).await;
    assert_eq!(sample(&page, "baton_disk_full"), Some(1.0), "{page}");
    assert!(sample(&page, "baton_disk_free_bytes").is_some_and(|free| free < 2.0 * 1024.0 * 1024.0), "{page}");
    let log = server.log_text();
    assert!(log.contains("the data directory's disk is full"), "{log}");
    // New work is refused, naming the directory.
    let refused = clients.executions.start_execution(start()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains(&format!("data directory {} is full", data.display())), "{refused:?}");
    // Pause and resume need the journal: the last page of its file may hold a few more events,
    // then they say there is no room, and the execution stays as it was.
    let mut paused = false;
    let mut refused = None;
    for _ in 0..1_000 {
        let result = if paused {
            clients.executions.resume_execution(pb::ResumeExecutionRequest { id: held.clone() }).await.map(drop)
        } else {
            clients.executions.pause_execution(pb::PauseExecutionRequest { id: held.clone() }).await.map(drop)
        };
        match result {
            Ok(()) => paused = !paused,
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let refused = refused.expect("the journal runs out of room");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("No space left on device"), "{refused:?}");
    let state = if paused { pb::ExecutionState::Paused } else { pb::ExecutionState::Running };
    // The step answers; its success waits for room, and reading goes on meanwhile.
    open.send_replace(true);
    let get = pb::GetExecutionRequest { id: held.clone() };
    let running = clients.executions.get_execution(get.clone()).await.unwrap().into_inner().execution.unwrap();
    assert_eq!(running.state, state as i32);
    clients.executions.list_executions(pb::ListExecutionsRequest::default()).await.unwrap();
    let page = scrape(server.metrics).await;
    assert!(sample(&page, "baton_store_no_space_total").is_some_and(|n| n >= 1.0), "{page}");

    // Room again: the server serves, the held run ends, and new work runs.
    std::fs::remove_file(filler).unwrap();
    until("health says SERVING", Duration::from_secs(30), async || {
        health(&server).await == Some(ServingStatus::Serving)
    })
    .await;
    if paused {
        let resumed = clients.executions.resume_execution(pb::ResumeExecutionRequest { id: held.clone() }).await;
        if let Err(status) = resumed {
            let execution = clients.executions.get_execution(get.clone()).await.unwrap().into_inner().execution;
            panic!("resume: {status:?}\nexecution: {execution:?}\nlog:\n{}", server.log_text());
        }
    }
    let done = tokio::time::timeout(Duration::from_secs(30), clients.finished(&held)).await.expect("the run ends");
    assert_eq!(done.state, pb::ExecutionState::Completed as i32, "{done:?}");
    let again = clients.executions.start_execution(start()).await.unwrap().into_inner().execution.unwrap().id;
    let done = tokio::time::timeout(Duration::from_secs(30), clients.finished(&again)).await.expect("it ends");
    assert_eq!(done.state, pb::ExecutionState::Completed as i32, "{done:?}");
    let page = scrape(server.metrics).await;
    assert_eq!(sample(&page, "baton_disk_full"), Some(0.0), "{page}");
    assert!(server.log_text().contains("the data directory's disk has room again"));
    assert_eq!(server.terminate().code(), Some(0), "{}", server.log_text());
}
