//! The `baton` CLI against a real `baton serve` and the example services: apply, run with
//! --wait, exec get/list/pause/resume/cancel, plan and orchestrate, with the exit codes that
//! scripts rely on; and `baton serve` on the worker threads it is given.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::ServerProcess;

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn json(output: &Output) -> Value {
    assert!(output.status.success(), "{}", text(output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(output)))
}

/// Runs the blocking CLI off the runtime the services live on.
async fn cli(server: &ServerProcess, args: &[&str]) -> Output {
    let (url, args): (String, Vec<String>) = (server.url(), args.iter().map(|s| (*s).to_owned()).collect());
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["--server", &url])
            .args(&args)
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_watches_pauses_and_plans_with_meaningful_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &[]).await;
    let options = baton_examples::ServiceOptions {
        baton: Some(server.url()),
        // Long enough that a run started by one CLI process is still running when the next
        // process pauses it, on a machine busy with the rest of the suite.
        latency: Duration::from_millis(1000),
        ..baton_examples::ServiceOptions::default()
    };
    let services = baton_examples::spawn_shop(&options).await.unwrap();
    for service in &services {
        tokio::time::timeout(Duration::from_secs(30), service.handle().registered()).await.unwrap();
    }

    let applied = cli(&server, &["workflow", "apply", "examples/workflows/order.yaml"]).await;
    assert!(applied.status.success(), "{}", text(&applied));
    let listed = json(&cli(&server, &["--output", "json", "workflow", "list"]).await);
    assert!(listed.to_string().contains("\"order\""), "{listed}");

    // A run waited for: exit 0 and its output.
    let input = r#"{"sku": "book-1", "quantity": 1, "amount": 12.5}"#;
    let done = cli(&server, &["--output", "json", "run", "order", "--input", input, "--wait"]).await;
    let done_json = json(&done);
    assert!(done_json.to_string().contains("completed"), "{done_json}");

    // Started, paused, resumed, then watched to its end.
    let started = json(&cli(&server, &["--output", "json", "run", "order", "--input", input]).await);
    let id = started["id"].as_str().or_else(|| started["execution"]["id"].as_str()).unwrap().to_owned();
    let paused = cli(&server, &["exec", "pause", &id]).await;
    assert!(paused.status.success(), "{}", text(&paused));
    let shown = json(&cli(&server, &["--output", "json", "exec", "get", &id]).await);
    assert!(shown.to_string().contains("paused"), "{shown}");
    let resumed = cli(&server, &["exec", "resume", &id]).await;
    assert!(resumed.status.success(), "{}", text(&resumed));
    let watched = cli(&server, &["exec", "watch", &id]).await;
    assert_eq!(watched.status.code(), Some(0), "{}", text(&watched));

    // Pausing a finished execution is a clear refusal: exit 1, the gRPC code named.
    let again = cli(&server, &["exec", "pause", &id]).await;
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("FAILED_PRECONDITION"), "{}", text(&again));

    // A cancelled run waited for exits 3.
    let slow = json(&cli(&server, &["--output", "json", "run", "order", "--input", input]).await);
    let slow_id = slow["id"].as_str().or_else(|| slow["execution"]["id"].as_str()).unwrap().to_owned();
    let cancelled = cli(&server, &["exec", "cancel", &slow_id, "--reason", "test"]).await;
    assert!(cancelled.status.success(), "{}", text(&cancelled));
    let watched = cli(&server, &["exec", "watch", &slow_id]).await;
    assert_eq!(watched.status.code(), Some(3), "{}", text(&watched));

    let executions = json(&cli(&server, &["--output", "json", "exec", "list", "--workflow", "order"]).await);
    assert!(executions.to_string().contains(&id), "{executions}");

    // An idempotency key finds the one execution it started; a key the server refuses exits 1.
    let keyed = ["--output", "json", "run", "order", "--input", input, "--idempotency-key", "cli-order-1"];
    let keyed = json(&cli(&server, &keyed).await);
    let keyed_id = keyed["id"].as_str().or_else(|| keyed["execution"]["id"].as_str()).unwrap().to_owned();
    let by_key = json(&cli(&server, &["--output", "json", "exec", "list", "--idempotency-key", "cli-order-1"]).await);
    let listed: Vec<&str> = by_key.as_array().unwrap().iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(listed, [keyed_id.as_str()], "{by_key}");
    let long_key = "k".repeat(300);
    let refused = cli(&server, &["exec", "list", "--idempotency-key", &long_key]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("INVALID_ARGUMENT"), "{}", text(&refused));
    assert!(text(&refused).contains("idempotency_key"), "{}", text(&refused));

    // Usage errors exit 2 before any call.
    let bad = cli(&server, &["run", "order", "--input", "{not json"]).await;
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    let unknown = cli(&server, &["exec", "get", "not-an-id"]).await;
    assert_ne!(unknown.status.code(), Some(0), "{}", text(&unknown));

    // The planner: from an order to a tracking number, and orchestrated end to end.
    let plan = cli(&server, &["plan", "--have", "order", "--want", "tracking"]).await;
    assert!(plan.status.success(), "{}", text(&plan));
    assert!(text(&plan).contains("shipping"), "{}", text(&plan));
    // A planned workflow hands each service the concepts it consumes, by name.
    let order = format!(r#"{{"order": {input}}}"#);
    let orchestrated =
        cli(&server, &["orchestrate", "--have", "order", "--want", "tracking", "--input", &order, "--wait"]).await;
    assert_eq!(orchestrated.status.code(), Some(0), "{}", text(&orchestrated));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_on_the_worker_threads_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--worker-threads", "1", "--log-format", "json"];
    let server = ServerProcess::start(&dir.path().join("data"), &flags).await;
    let log = server.log_text();
    assert!(log.contains("config: worker_threads = 1"), "{log}");
    // What the runtime itself counts.
    let serving = log.lines().find(|line| line.contains(r#""message":"serving""#)).unwrap_or_else(|| panic!("{log}"));
    assert_eq!(serde_json::from_str::<Value>(serving).unwrap()["fields"]["workers"], 1, "{serving}");
    drop(server);

    let refused = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["serve", "--worker-threads", "0", "--data-dir"])
        .arg(dir.path().join("refused"))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("baton serve: worker_threads: must be from 1 to 1024"), "{}", text(&refused));
}
