//! Expression bombs against a real `baton serve`: a step input that allocates without end,
//! recurses without end, builds a 1 GiB string or spins for ever. Each fails its step with an
//! `expression_limit` naming the expression and the bound, the execution follows its error
//! policy, the server's memory stays bounded, and the server keeps serving: while two spin,
//! `GetExecution`, `/metrics`, another workflow, cancel, the run's deadline and SIGTERM all work.
//! A server killed with an execution whose next step is a bomb recovers it into a failure
//! rather than a crash loop.

mod support;

use std::time::{Duration, Instant};

use axum::Json;
use axum::routing::post;
use baton_grpc::pb;
use serde_json::{Value, json};
use support::{Clients, ServerProcess, sample, scrape};

/// Longest any one call may take to be answered: past it, the server hangs.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Serves `{"echo": <request>}` on a loopback port, after `sleep_ms` of the request if it has
/// one; its URL.
async fn echo_service() -> String {
    let echo = |Json(body): Json<Value>| async move {
        if let Some(ms) = body.get("sleep_ms").and_then(Value::as_u64) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Json(json!({"echo": body}))
    };
    let router = axum::Router::new().route("/", post(echo));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/")
}

/// Registers the echo service and applies `echo`, a one-step workflow of it.
async fn with_echo(clients: &mut Clients, url: &str) {
    let spec = pb::ServiceSpec {
        id: "echo".to_owned(),
        endpoint: Some(pb::Endpoint {
            kind: Some(pb::endpoint::Kind::Http(pb::endpoint::Http { url: url.to_owned() })),
        }),
        capabilities: vec!["echo".to_owned()],
        ..Default::default()
    };
    clients.registry.register(pb::RegisterRequest { spec: Some(spec) }).await.unwrap();
    let echo = "name: echo\nsteps:\n  - id: call\n    service: echo\n    input: {value: \"${ .input.value }\"}\n";
    clients.apply(&format!("{echo}output: \"${{ .steps.call.output }}\"\n")).await;
}

/// Starts `workflow` with `input`; the execution's id.
async fn start(clients: &mut Clients, workflow: &str, input: Value) -> String {
    let request = pb::StartExecutionRequest {
        workflow: workflow.to_owned(),
        input_json: input.to_string(),
        ..Default::default()
    };
    let started = tokio::time::timeout(ANSWER_WITHIN, clients.executions.start_execution(request))
        .await
        .expect("StartExecution answers")
        .unwrap();
    started.into_inner().execution.unwrap().id
}

/// The execution, answered within [`ANSWER_WITHIN`].
async fn get(clients: &mut Clients, id: &str) -> pb::Execution {
    let request = pb::GetExecutionRequest { id: id.to_owned() };
    let answer = tokio::time::timeout(ANSWER_WITHIN, clients.executions.get_execution(request))
        .await
        .unwrap_or_else(|_| panic!("GetExecution {id}: no answer within {ANSWER_WITHIN:?}"));
    answer.unwrap().into_inner().execution.unwrap()
}

/// Waits for `id` to finish, within `within`.
async fn finished(clients: &mut Clients, id: &str, within: Duration, server: &ServerProcess) -> pb::Execution {
    tokio::time::timeout(within, clients.finished(id))
        .await
        .unwrap_or_else(|_| panic!("execution {id} did not finish within {within:?}; log:\n{}", server.log_text()))
}

/// Runs the echo workflow to completion: the server serves workflows.
async fn echo_completes(clients: &mut Clients, server: &ServerProcess) {
    let id = start(clients, "echo", json!({"value": 7})).await;
    let execution = finished(clients, &id, Duration::from_secs(30), server).await;
    assert_eq!(execution.state, pb::ExecutionState::Completed as i32, "{execution:?}");
    assert_eq!(execution.output_json.as_deref(), Some(r#"{"echo":{"value":7}}"#));
}

/// A one-step workflow `name` whose step's input is `expression`, with more YAML after.
fn bomb_workflow(name: &str, expression: &str, more: &str) -> String {
    let expression = expression.replace('"', "\\\"");
    format!(
        "name: {name}\n{more}steps:\n  - id: boom\n    service: echo\n    input: {{value: \"${{ {expression} }}\"}}\n"
    )
}

/// The resident memory of process `pid`, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
}

/// Polls the metrics until `name` reaches `at_least`, within 60 s.
async fn metric_reaches(server: &ServerProcess, name: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(server.metrics).await;
        if sample(&text, name).is_some_and(|value| value >= at_least) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never reached {at_least}:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expression_bombs_fail_their_step_and_the_server_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ["--expression-cpu-time", "2s", "--expression-memory-mib", "128", "--expression-workers", "2"];
    let mut server = ServerProcess::start(&dir.path().join("data"), &limits).await;
    let mut clients = Clients::new(server.channel().await);
    with_echo(&mut clients, &echo_service().await).await;
    let bombs = [
        ("[range(1e12)] | length", "needed more than its memory limit of 128 MiB"),
        ("def f: f+1; f", "recursed deeper than the evaluator's 16 MiB stack allows"),
        ("reduce range(33) as $i (\"x\"; . + .)", "needed more than its memory limit of 128 MiB"),
        ("last(range(1e11))", "used more than its CPU time limit of 2s"),
    ];
    let pid = server.pid();
    let mut most_resident = resident_bytes(pid);
    for (index, (bomb, bound)) in bombs.iter().enumerate() {
        let name = format!("bomb-{index}");
        clients.apply(&bomb_workflow(&name, bomb, "")).await;
        let id = start(&mut clients, &name, json!({})).await;
        let deadline = Instant::now() + Duration::from_secs(120);
        let execution = loop {
            assert!(Instant::now() < deadline, "{bomb} still runs; log:\n{}", server.log_text());
            most_resident = most_resident.max(resident_bytes(pid));
            let execution = get(&mut clients, &id).await;
            if execution.state != pb::ExecutionState::Running as i32 {
                break execution;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(execution.state, pb::ExecutionState::Failed as i32, "{bomb}: {execution:?}");
        let error = format!("step boom failed: expression_limit: expression `{bomb}` {bound}");
        assert_eq!(execution.error.as_deref(), Some(error.as_str()));
        let task = &execution.tasks[0];
        assert_eq!((task.state, task.attempts), (pb::TaskState::Failed as i32, 0), "not called, not retried");
        echo_completes(&mut clients, &server).await;
    }
    // The bombs grew worker processes, never the server (which idles far below this).
    assert!(most_resident < 512 << 20, "the server grew to {most_resident} bytes");

    // Under `on_error: continue` the execution goes on without the step.
    let tolerant = "name: tolerant\nsteps:\n  - id: boom\n    service: echo\n    on_error: continue\n    input: \"${ def f: f+1; f }\"\n  - id: fine\n    service: echo\n    input: {value: \"${ .input.value }\"}\noutput: \"${ .steps.fine.output }\"\n";
    clients.apply(tolerant).await;
    let id = start(&mut clients, "tolerant", json!({"value": 1})).await;
    let execution = finished(&mut clients, &id, Duration::from_secs(60), &server).await;
    assert_eq!(execution.state, pb::ExecutionState::Completed as i32, "{execution:?}");
    assert_eq!(execution.output_json.as_deref(), Some(r#"{"echo":{"value":1}}"#));

    let text = scrape(server.metrics).await;
    for (bound, count) in [("memory", 2.0), ("stack", 2.0), ("cpu_time", 1.0)] {
        let name = format!("baton_expression_limits_total{{bound=\"{bound}\"}}");
        assert_eq!(sample(&text, &name), Some(count), "{name}:\n{text}");
    }
    assert!(!server.log_text().contains("panicked"), "{}", server.log_text());
    assert_eq!(server.terminate().code(), Some(0), "{}", server.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_expressions_leave_the_api_cancel_the_deadline_and_sigterm_working() {
    let dir = tempfile::tempdir().unwrap();
    // Spins that would last a minute each, on both evaluator processes.
    let limits = ["--expression-cpu-time", "60s", "--expression-workers", "2"];
    let mut server = ServerProcess::start(&dir.path().join("data"), &limits).await;
    let mut clients = Clients::new(server.channel().await);
    with_echo(&mut clients, &echo_service().await).await;
    clients.apply(&bomb_workflow("spin", "last(range(1e11))", "")).await;
    clients.apply(&bomb_workflow("spin-deadline", "last(range(1e11))", "deadline: 3s\n")).await;

    let cancelled = start(&mut clients, "spin", json!({})).await;
    let deadlined = start(&mut clients, "spin-deadline", json!({})).await;
    metric_reaches(&server, "baton_expression_evaluations_in_flight", 2.0).await;
    // Both evaluators spin: the API, the metrics and plain-path workflows carry on.
    assert_eq!(get(&mut clients, &cancelled).await.state, pb::ExecutionState::Running as i32);
    echo_completes(&mut clients, &server).await;
    let request = pb::CancelExecutionRequest { id: cancelled.clone(), reason: "spins".to_owned() };
    tokio::time::timeout(ANSWER_WITHIN, clients.executions.cancel_execution(request)).await.unwrap().unwrap();
    let execution = finished(&mut clients, &cancelled, ANSWER_WITHIN, &server).await;
    assert_eq!((execution.state, execution.error.as_deref()), (pb::ExecutionState::Cancelled as i32, Some("spins")));
    let execution = finished(&mut clients, &deadlined, Duration::from_secs(30), &server).await;
    assert_eq!(execution.state, pb::ExecutionState::Failed as i32);
    assert_eq!(execution.error.as_deref(), Some("run deadline of 3s exceeded"));
    // Both abandoned evaluations had their worker killed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sample(&scrape(server.metrics).await, "baton_expression_evaluations_in_flight") != Some(0.0) {
        assert!(Instant::now() < deadline, "evaluations still in flight");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGTERM while one spins: the server exits, and takes its evaluators with it.
    start(&mut clients, "spin", json!({})).await;
    metric_reaches(&server, "baton_expression_evaluations_in_flight", 1.0).await;
    let evaluators = children(server.pid());
    assert!(!evaluators.is_empty());
    let status = server.terminate_within(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", server.log_text());
    let deadline = Instant::now() + Duration::from_secs(10);
    while evaluators.iter().any(|pid| alive(*pid)) {
        assert!(Instant::now() < deadline, "evaluator processes outlived the server: {evaluators:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // `pid (comm) state ppid ...`; the name may hold spaces, so read after its `)`.
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if parent == Some(pid) {
            found.push(child);
        }
    }
    found
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_before_a_bomb_step_recovers_the_execution_into_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&dir.path().join("data"), &[]).await;
    let url = echo_service().await;
    let mut clients = Clients::new(server.channel().await);
    with_echo(&mut clients, &url).await;
    let workflow = "name: late-bomb\nsteps:\n  - id: slow\n    service: echo\n    input: {sleep_ms: 3000}\n  - id: boom\n    service: echo\n    depends_on: [slow]\n    input: \"${ def f: f+1; f }\"\n";
    clients.apply(workflow).await;
    let id = start(&mut clients, "late-bomb", json!({})).await;
    // Killed while the first step is called: the bomb is what recovery runs into.
    let deadline = Instant::now() + ANSWER_WITHIN;
    while !get(&mut clients, &id)
        .await
        .tasks
        .iter()
        .any(|t| t.step == "slow" && t.state == pb::TaskState::Scheduled as i32)
    {
        assert!(Instant::now() < deadline, "the slow step was never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    server.restart().await;
    let mut clients = Clients::new(server.channel().await);
    with_echo(&mut clients, &url).await;
    let execution = finished(&mut clients, &id, Duration::from_secs(60), &server).await;
    assert_eq!(execution.state, pb::ExecutionState::Failed as i32, "{execution:?}");
    let error = "step boom failed: expression_limit: expression `def f: f+1; f` recursed deeper than the evaluator's 16 MiB stack allows";
    assert_eq!(execution.error.as_deref(), Some(error));
    echo_completes(&mut clients, &server).await;

    // Another crash and start: nothing left to recover, no crash loop, the journal kept.
    server.kill9();
    server.restart().await;
    let mut clients = Clients::new(server.channel().await);
    let mut events = clients
        .executions
        .watch_execution(pb::WatchExecutionRequest { id: id.clone(), from_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(event) = tokio::time::timeout(ANSWER_WITHIN, events.message()).await.unwrap().unwrap() {
        last = event.event.and_then(|e| e.kind);
    }
    assert!(matches!(last, Some(pb::event::Kind::Failed(_))), "{last:?}");
    with_echo(&mut clients, &url).await;
    echo_completes(&mut clients, &server).await;
    assert!(server.log_text().contains("recovered executions"));
    assert!(!server.log_text().contains("panicked"), "{}", server.log_text());
}
