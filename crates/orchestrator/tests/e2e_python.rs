//! A real Python client (grpcio, stubs generated from proto/ by grpcio-tools) against a real
//! `baton serve`: it registers nothing itself (the example services register over gRPC),
//! applies a workflow, starts 50 executions, watches one to its end, pauses and resumes one,
//! and checks every output (`client.py demo --check`). And a long-lived grpcio client keeps its
//! connection: 64 threads on one channel run 20,000 executions, each watch cancelled
//! (`call.cancel()`) at its terminal event (`client.py churn`).
//!
//! The test makes its own virtualenv under the target dir, once, from PyPI.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{Clients, ServerProcess, TICK, wait_completed};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A virtualenv with examples/python/requirements.txt installed; reused while they match.
fn venv() -> PathBuf {
    let requirements = repo().join("examples/python/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-venv");
    // nextest runs each test in its own process: one builds the virtualenv, the others wait
    // for it, or a `--clear` under a running pip leaves packages without metadata.
    let lock = std::fs::File::create(dir.with_extension("lock")).unwrap();
    lock.lock().unwrap();
    let stamp = dir.join("baton-requirements.txt");
    let python = dir.join("bin/python");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) && python.exists() {
        return python;
    }
    let python3 = std::env::var("BATON_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let made = Command::new(&python3).args(["-m", "venv", "--clear"]).arg(&dir).status();
    assert!(
        made.as_ref().is_ok_and(|s| s.success()),
        "cannot make a virtualenv with {python3} (set BATON_PYTHON to a Python 3 with venv): {made:?}"
    );
    let installed = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements)
        .status()
        .unwrap();
    assert!(installed.success(), "pip install -r {} failed", requirements.display());
    std::fs::write(&stamp, wanted).unwrap();
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_drives_the_api_end_to_end() {
    let python = tokio::task::spawn_blocking(venv).await.unwrap();
    let reflecting_python = python.clone();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &[]).await;
    // Slow enough that a pause lands before the run ends.
    let options = baton_examples::ServiceOptions {
        baton: Some(server.url()),
        latency: Duration::from_millis(150),
        ..baton_examples::ServiceOptions::default()
    };
    let services = baton_examples::spawn_shop(&options).await.unwrap();
    for service in &services {
        tokio::time::timeout(Duration::from_secs(30), service.handle().registered()).await.unwrap();
    }
    let gen_dir = dir.path().join("gen");
    let grpc = server.grpc.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(repo().join("examples/python/client.py"))
            .arg("--gen-dir")
            .arg(gen_dir)
            .args(["demo", "--baton", &grpc, "--runs", "50", "--timeout", "120", "--check"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "client.py failed: {}\n{stdout}\n{stderr}\n{}", output.status, server.log_text());
    assert!(stdout.contains("after 0.5s: paused"), "{stdout}");
    assert_eq!(stdout.matches(" completed: ").count(), 51, "50 runs and the paused one completed:\n{stdout}");

    // grpcio-reflection speaks only v1alpha: the server answers it too.
    let grpc = server.grpc.to_string();
    let listed = tokio::task::spawn_blocking(move || {
        Command::new(reflecting_python)
            .arg(repo().join("examples/python/client.py"))
            .args(["reflect", "--baton", &grpc])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "client.py reflect failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    for service in
        ["baton.v1.RegistryService", "baton.v1.ExecutionService", "baton.v1.WorkflowService", "grpc.health.v1.Health"]
    {
        assert!(stdout.contains(service), "{service} missing:\n{stdout}");
    }
    assert!(stdout.contains("baton.v1.ExecutionService: StartExecution"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_client_cancelling_each_watch_at_its_end_keeps_its_channel() {
    const EXECUTIONS: usize = 20_000;
    let python = tokio::task::spawn_blocking(venv).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One connection may make as many requests as the callers can.
    let server =
        ServerProcess::start(&dir.path().join("data"), &["--rate-limit", "1000000", "--log-level", "warn"]).await;
    let channel = server.channel().await;
    Clients::new(channel.clone()).apply(TICK).await;
    let gen_dir = dir.path().join("gen");
    let grpc = server.grpc.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(repo().join("examples/python/client.py"))
            .arg("--gen-dir")
            .arg(gen_dir)
            .args(["churn", "--baton", &grpc, "--workflow", "tick", "--callers", "64"])
            .args(["--executions", &EXECUTIONS.to_string()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "client.py churn failed: {}\n{stdout}\n{stderr}", output.status);
    assert!(stdout.contains(": 0 errors"), "{stdout}");
    wait_completed(&channel, EXECUTIONS, Duration::from_secs(60)).await;
}
