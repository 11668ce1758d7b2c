//! `baton run --wait|--watch` and `baton exec watch|get` against a scripted `ExecutionService`
//! on 127.0.0.1:0 (a hand-written gRPC double, so the client is tested without the workflow
//! engine): the exit code follows the execution's outcome, and every call carries the bearer
//! token from `--token-file`.

use std::process::ExitCode;

use baton::cli::{ClientCommand, ClientOptions};
use baton_grpc::pb;
use baton_grpc::pb::event::Kind;
use baton_grpc::pb::execution_service_server::{ExecutionService, ExecutionServiceServer};
use clap::Parser;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

const TOKEN: &str = "s3cret";

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    options: ClientOptions,
    #[command(subcommand)]
    command: ClientCommand,
}

/// Executions whose id is their workflow's name: `ok` completes, `bad` fails, `stop` is
/// cancelled, `stuck` never ends (its journal stops while it runs).
#[derive(Debug, Default)]
struct Scripted;

fn at(ms: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: 1_700_000_000 + ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 })
}

fn ending(id: &str) -> Option<(pb::ExecutionState, Kind)> {
    match id {
        "ok" => Some((
            pb::ExecutionState::Completed,
            Kind::Completed(pb::event::Completed { output_json: r#"{"done":true}"#.into() }),
        )),
        "bad" => Some((
            pb::ExecutionState::Failed,
            Kind::Failed(pb::event::Failed { error: "step b failed".into(), problem: None }),
        )),
        "stop" => {
            Some((pb::ExecutionState::Cancelled, Kind::Cancelled(pb::event::Cancelled { reason: "operator".into() })))
        }
        _ => None,
    }
}

fn execution(id: &str, state: pb::ExecutionState) -> pb::Execution {
    pb::Execution {
        id: id.to_owned(),
        workflow: id.to_owned(),
        version: 1,
        state: state as i32,
        input_json: "{}".into(),
        output_json: (state == pb::ExecutionState::Completed).then(|| r#"{"done":true}"#.to_owned()),
        error: None,
        created_at: at(0),
        updated_at: at(30),
        tasks: ["a", "b"]
            .map(|step| pb::TaskStatus {
                step: step.into(),
                state: pb::TaskState::Pending as i32,
                ..Default::default()
            })
            .to_vec(),
        parent: None,
        problem: None,
        elided: Vec::new(),
    }
}

fn journal(id: &str) -> Vec<pb::Event> {
    let mut kinds = vec![
        Kind::Started(pb::event::Started { input_json: "{}".into() }),
        Kind::TaskScheduled(pb::event::TaskScheduled { step: "a".into(), attempt: 1, service: "svc".into() }),
        Kind::TaskSucceeded(pb::event::TaskSucceeded {
            step: "a".into(),
            attempt: 1,
            output_json: "1".into(),
            context_json: None,
        }),
        Kind::TaskScheduled(pb::event::TaskScheduled { step: "b".into(), attempt: 1, service: "svc".into() }),
        Kind::TaskFailed(pb::event::TaskFailed {
            step: "b".into(),
            attempt: 1,
            error: "503".into(),
            retryable: true,
            problem: None,
        }),
        Kind::TaskScheduled(pb::event::TaskScheduled { step: "b".into(), attempt: 2, service: "svc".into() }),
    ];
    kinds.extend(ending(id).map(|(_, kind)| kind));
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| pb::Event {
            execution_id: id.to_owned(),
            sequence: i as u64 + 1,
            at: at(i as i64 * 5),
            kind: Some(kind),
            elided: Vec::new(),
        })
        .collect()
}

fn authorize<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get("authorization") {
        Some(value) if value == format!("Bearer {TOKEN}").as_str() => Ok(()),
        _ => Err(Status::unauthenticated("missing or wrong bearer token")),
    }
}

fn known(id: &str) -> Result<(), Status> {
    if ending(id).is_some() || id == "stuck" { Ok(()) } else { Err(Status::not_found(format!("no execution {id}"))) }
}

#[tonic::async_trait]
impl ExecutionService for Scripted {
    async fn start_execution(
        &self,
        request: Request<pb::StartExecutionRequest>,
    ) -> Result<Response<pb::StartExecutionResponse>, Status> {
        authorize(&request)?;
        let request = request.into_inner();
        known(&request.workflow)?;
        serde_json::from_str::<serde_json::Value>(&request.input_json)
            .map_err(|e| Status::invalid_argument(format!("input_json: {e}")))?;
        Ok(Response::new(pb::StartExecutionResponse {
            execution: Some(execution(&request.workflow, pb::ExecutionState::Running)),
            existing: false,
        }))
    }

    async fn get_execution(
        &self,
        request: Request<pb::GetExecutionRequest>,
    ) -> Result<Response<pb::GetExecutionResponse>, Status> {
        authorize(&request)?;
        let id = request.into_inner().id;
        known(&id)?;
        let state = ending(&id).map_or(pb::ExecutionState::Running, |(state, _)| state);
        Ok(Response::new(pb::GetExecutionResponse { execution: Some(execution(&id, state)) }))
    }

    async fn list_executions(
        &self,
        _: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn pause_execution(
        &self,
        _: Request<pb::PauseExecutionRequest>,
    ) -> Result<Response<pb::PauseExecutionResponse>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn resume_execution(
        &self,
        _: Request<pb::ResumeExecutionRequest>,
    ) -> Result<Response<pb::ResumeExecutionResponse>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn cancel_execution(
        &self,
        request: Request<pb::CancelExecutionRequest>,
    ) -> Result<Response<pb::CancelExecutionResponse>, Status> {
        authorize(&request)?;
        Err(Status::failed_precondition(format!("execution {} already ended", request.into_inner().id)))
    }

    type WatchExecutionStream = tokio_stream::Iter<std::vec::IntoIter<Result<pb::WatchExecutionResponse, Status>>>;

    async fn signal_execution(
        &self,
        request: Request<pb::SignalExecutionRequest>,
    ) -> Result<Response<pb::SignalExecutionResponse>, Status> {
        let request = request.into_inner();
        Err(Status::failed_precondition(format!("execution {} has ended", request.id)))
    }

    async fn watch_execution(
        &self,
        request: Request<pb::WatchExecutionRequest>,
    ) -> Result<Response<Self::WatchExecutionStream>, Status> {
        authorize(&request)?;
        let request = request.into_inner();
        known(&request.id)?;
        let events: Vec<_> = journal(&request.id)
            .into_iter()
            .filter(|event| event.sequence >= request.from_sequence)
            .map(|event| Ok(pb::WatchExecutionResponse { event: Some(event) }))
            .collect();
        Ok(Response::new(tokio_stream::iter(events)))
    }
}

struct Server {
    url: String,
    token_file: tempfile::NamedTempFile,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Server {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ExecutionServiceServer::new(Scripted))
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        let token_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(token_file.path(), format!("{TOKEN}\n")).unwrap();
        Self { url, token_file, stop: Some(stop), task }
    }

    /// Runs `baton ARGS --server URL --token-file TOKEN` and returns its exit code.
    async fn baton(&self, args: &[&str]) -> ExitCode {
        let token = self.token_file.path().display().to_string();
        let argv =
            std::iter::once("baton").chain(args.iter().copied()).chain(["--server", &self.url, "--token-file", &token]);
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        baton::cli::run(cli.command, &cli.options).await
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn waiting_and_watching_exit_by_the_execution_outcome() {
    let server = Server::start().await;
    for (workflow, code) in [("ok", 0), ("bad", 1), ("stop", 3)] {
        for mode in ["--wait", "--watch"] {
            for output in ["table", "json"] {
                let args = ["run", workflow, "--input", r#"{"x":1}"#, mode, "--output", output];
                assert_eq!(server.baton(&args).await, ExitCode::from(code), "{args:?}");
            }
        }
        assert_eq!(server.baton(&["exec", "watch", workflow]).await, ExitCode::from(code), "exec watch {workflow}");
        assert_eq!(server.baton(&["exec", "watch", workflow, "--from", "99"]).await, ExitCode::from(code));
    }
    // A journal that ends before the execution does is a failure, not a success.
    assert_eq!(server.baton(&["run", "stuck", "--watch"]).await, ExitCode::from(1));
    // Without waiting, starting is the success.
    assert_eq!(server.baton(&["run", "bad"]).await, ExitCode::SUCCESS);
    assert_eq!(server.baton(&["exec", "get", "stop"]).await, ExitCode::SUCCESS);
    assert_eq!(server.baton(&["exec", "get", "nope"]).await, ExitCode::from(1));
    assert_eq!(server.baton(&["exec", "cancel", "ok", "--reason", "late"]).await, ExitCode::from(1));
    server.stop().await;
}

#[tokio::test]
async fn calls_without_the_token_are_refused() {
    let server = Server::start().await;
    let cli = Cli::try_parse_from(["baton", "exec", "get", "ok", "--server", &server.url]).unwrap();
    assert_eq!(baton::cli::run(cli.command, &cli.options).await, ExitCode::from(1));
    server.stop().await;
}
