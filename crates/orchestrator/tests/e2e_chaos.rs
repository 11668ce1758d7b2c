//! Chaos: executions of the 5-step `pipeline` workflow through a real `baton serve` (redb)
//! while the server is killed with `kill -9` at random moments and restarted, and the example
//! services fail a share of calls before their effect and lose a share of answers after it
//! (a 503 or a connection cut). Every execution Start acknowledged exists after each restart
//! and ends in a terminal state, and each step's effect happened at most once per idempotency
//! key, exactly once for each step of a completed execution (the services' `GET /stats/keys`).
//!
//! Short by default, for CI: 120 executions, 3 kills, 5% failed and 5% lost calls.
//! `cargo xtask chaos` runs it longer through these variables: `BATON_CHAOS_EXECUTIONS`,
//! `BATON_CHAOS_KILLS`, `BATON_CHAOS_FAIL_RATE`, `BATON_CHAOS_LOSE_RATE`, `BATON_CHAOS_SEED`,
//! `BATON_CHAOS_CLIENTS` (executions in flight at once). It prints its figures on stderr,
//! lines starting `chaos:`.

#![allow(clippy::print_stderr, reason = "the run reports its figures on stderr")]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use baton_grpc::pb;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use support::{Clients, ServerProcess, shop_with_pipeline_and};
use tokio::task::JoinSet;
use tonic::transport::Channel;

/// The run's shape, from `BATON_CHAOS_*` or the CI defaults.
#[derive(Debug, Clone, Copy)]
struct Settings {
    executions: usize,
    kills: usize,
    fail_rate: f64,
    lose_rate: f64,
    seed: u64,
    clients: usize,
}

impl Settings {
    fn from_env() -> Self {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
            match std::env::var(name) {
                Ok(text) => text.parse().unwrap_or_else(|_| panic!("{name}={text:?} does not parse")),
                Err(_) => default,
            }
        }
        let settings = Self {
            executions: var("BATON_CHAOS_EXECUTIONS", 120),
            kills: var("BATON_CHAOS_KILLS", 3),
            fail_rate: var("BATON_CHAOS_FAIL_RATE", 0.05),
            lose_rate: var("BATON_CHAOS_LOSE_RATE", 0.05),
            seed: var("BATON_CHAOS_SEED", 0xc4a05),
            clients: var("BATON_CHAOS_CLIENTS", 16),
        };
        assert!(settings.executions > 0 && settings.clients > 0, "{settings:?}");
        settings
    }
}

/// Steps of `pipeline.yaml` by the service kind that performs them.
const STEPS: [(&str, &[&str]); 3] =
    [("inventory", &["reserve", "reserve-wrap"]), ("payments", &["charge"]), ("shipping", &["ship", "ship-wrap"])];

/// What the clients have learnt so far: execution number -> id, once Start answered.
#[derive(Default)]
struct Progress {
    acknowledged: Mutex<BTreeMap<usize, String>>,
    finished: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9s_and_faulty_services_lose_no_execution_and_repeat_no_effect() {
    let settings = Settings::from_env();
    eprintln!("chaos: {settings:?}");
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&dir.path().join("data"), &[]).await;
    // Latency keeps executions in flight when the kills land.
    let options = baton_examples::ServiceOptions {
        latency: Duration::from_millis(10),
        fail_rate: settings.fail_rate,
        lose_rate: settings.lose_rate,
        seed: Some(settings.seed),
        ..baton_examples::ServiceOptions::default()
    };
    let (services, _) = shop_with_pipeline_and(&server, options).await;

    // Clients in closed loops: start one execution (retrying with its key through the kills),
    // follow it to its end, start the next.
    let progress = Arc::new(Progress::default());
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..settings.clients {
        let (grpc, progress, next) = (server.url(), Arc::clone(&progress), Arc::clone(&next));
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= settings.executions {
                    return;
                }
                let id = start(&grpc, n).await;
                progress.acknowledged.lock().insert(n, id.clone());
                finished(&grpc, &id).await;
                progress.finished.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    // Kills at random points of the run: after a random share of the executions has finished,
    // plus up to 200 ms, so they land on starts, steps in flight and journal writes alike.
    let mut rng = rand::rngs::StdRng::seed_from_u64(settings.seed);
    let mut points: Vec<usize> = (0..settings.kills).map(|_| rng.random_range(0..settings.executions)).collect();
    points.sort_unstable();
    let mut restarts = Vec::new();
    for (kill, point) in (1..).zip(points) {
        while progress.finished.load(Ordering::Relaxed) < point && !workers.is_empty() {
            if let Some(done) = workers.try_join_next() {
                done.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        let before: Vec<String> = progress.acknowledged.lock().values().cloned().collect();
        server.kill9();
        let restarted = Instant::now();
        server.restart().await;
        restarts.push(restarted.elapsed());
        // Everything Start acknowledged before the kill is still there.
        let mut clients = Clients::new(server.channel().await);
        for id in &before {
            let found = clients.executions.get_execution(pb::GetExecutionRequest { id: id.clone() }).await;
            assert!(found.is_ok(), "execution {id} lost by kill {kill}: {:?}\n{}", found.err(), server.log_text());
        }
    }
    let run_deadline = Duration::from_secs(120).max(Duration::from_millis(500) * settings.executions as u32);
    tokio::time::timeout(run_deadline, async {
        while let Some(done) = workers.join_next().await {
            done.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the executions did not finish within {run_deadline:?}\n{}", server.log_text()));
    let elapsed = began.elapsed();

    // Every acknowledged execution exists and is terminal.
    let acknowledged = progress.acknowledged.lock().clone();
    assert_eq!(acknowledged.len(), settings.executions);
    let mut clients = Clients::new(server.channel().await);
    let mut states: BTreeMap<&str, usize> = BTreeMap::new();
    let mut completed = Vec::new();
    for id in acknowledged.values() {
        let execution = clients.finished(id).await;
        let state = pb::ExecutionState::try_from(execution.state).unwrap();
        *states.entry(state.as_str_name()).or_default() += 1;
        if state == pb::ExecutionState::Completed {
            completed.push(id.clone());
        } else {
            eprintln!("chaos: execution {id} ended {} ({:?})", state.as_str_name(), execution.error);
        }
    }

    // Each key's effect happened at most once, exactly once for every step of a completed
    // execution, and only for executions that were acknowledged.
    let (mut duplicates, mut failures, mut requests, mut effects) = (0, 0, 0, 0);
    for service in &services {
        let base = format!("http://{}", service.addr());
        let keys: BTreeMap<String, u64> =
            serde_json::from_value(get_json(&format!("{base}/stats/keys")).await).unwrap();
        let stats = get_json(&format!("{base}/stats")).await;
        let count = |name: &str| stats[name].as_u64().unwrap();
        (duplicates, failures, requests, effects) = (
            duplicates + count("duplicates"),
            failures + count("failures"),
            requests + count("requests"),
            effects + count("effects"),
        );
        let repeated: Vec<_> = keys.iter().filter(|(_, n)| **n != 1).collect();
        assert!(repeated.is_empty(), "{}: effects repeated: {repeated:?}", service.id());
        let steps = STEPS.iter().find(|(kind, _)| *kind == service.id()).unwrap().1;
        for id in &completed {
            for step in steps {
                assert!(keys.contains_key(&format!("{id}/{step}")), "{}: no effect for {id}/{step}", service.id());
            }
        }
        for key in keys.keys() {
            let execution = key.split_once('/').map_or(key.as_str(), |(e, _)| e);
            assert!(acknowledged.values().any(|id| id == execution), "{}: effect for unknown {key}", service.id());
        }
    }
    assert!(states.keys().all(|s| ["COMPLETED", "FAILED", "CANCELLED"].iter().any(|t| s.ends_with(t))), "{states:?}");

    let mean_restart = restarts.iter().sum::<Duration>().checked_div(restarts.len() as u32).unwrap_or_default();
    eprintln!(
        "chaos: {} executions ({states:?}), {} kills (restart to serving: mean {:.2} s), {:.1} s",
        acknowledged.len(),
        restarts.len(),
        mean_restart.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    eprintln!(
        "chaos: services: {requests} requests, {effects} effects, {failures} injected failures or lost answers, \
         {duplicates} duplicates prevented (a retry or a resumed step answered from the stored effect)"
    );
    drop(services);
}

/// Starts execution `n` with its idempotency key, retrying through restarts; its id.
async fn start(grpc: &str, n: usize) -> String {
    let request = pb::StartExecutionRequest {
        workflow: "pipeline".to_owned(),
        version: None,
        input_json: format!(r#"{{"sku": "book-{n}", "amount": {n}.5}}"#),
        idempotency_key: Some(format!("chaos-{n}")),
    };
    loop {
        let started = async {
            let channel = Channel::from_shared(grpc.to_owned()).unwrap().connect().await?;
            let mut client = pb::execution_service_client::ExecutionServiceClient::new(channel);
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                client.start_execution(request.clone()).await?.into_inner(),
            )
        };
        match started.await {
            Ok(answer) => return answer.execution.unwrap().id,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until execution `id` is terminal, reconnecting through restarts.
async fn finished(grpc: &str, id: &str) {
    loop {
        let state = async {
            let channel = Channel::from_shared(grpc.to_owned()).unwrap().connect().await?;
            let mut client = pb::execution_service_client::ExecutionServiceClient::new(channel);
            loop {
                let request = pb::GetExecutionRequest { id: id.to_owned() };
                let execution = client.get_execution(request).await?.into_inner().execution.unwrap();
                match pb::ExecutionState::try_from(execution.state).unwrap() {
                    pb::ExecutionState::Completed | pb::ExecutionState::Failed | pb::ExecutionState::Cancelled => {
                        return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(());
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        };
        match state.await {
            Ok(()) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// `GET url` as JSON, from outside the services as any client would read it.
async fn get_json(url: &str) -> Value {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    assert!(response.status().is_success(), "GET {url}: {}", response.status());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}
