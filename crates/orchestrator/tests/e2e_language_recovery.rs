//! The workflow language survives `kill -9` of a real `baton serve` (redb): a `for` over 1,000
//! items, a `wait`, a `listen` and a child workflow, each caught mid-way by the kill, complete
//! after the restart with every iteration and every effect once (counted by the example
//! services per idempotency key); and 10,000 executions waiting on 1-2 s timers all complete
//! after a restart in the middle, each timer fired once.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baton_grpc::pb;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use support::{Clients, ServerProcess};
use tokio::task::JoinSet;

const ITEMS: usize = 1_000;
/// Iterations of the loop in flight at once: at most this many are redone after the kill.
const CONCURRENCY: u64 = 4;

const FAN: &str = r#"
name: fan
steps:
  - id: each
    for: { each: n, in: "${ [range(.input.items)] }", concurrency: 4 }
    steps:
      - id: reserve
        query: { capabilities: [inventory.reserve] }
        input: { sku: "item-${ $n }", quantity: 1 }
output: "${ [.steps.each.output[].sku] }"
"#;

const NAP: &str = r#"
name: nap
steps:
  - { id: before, query: { capabilities: [payment.charge] }, input: { amount: 1 } }
  - { id: nap, wait: 12s, depends_on: [before] }
  - { id: after, query: { capabilities: [payment.charge] }, input: { amount: 2 }, depends_on: [nap] }
output: "${ .steps.after.output.amount }"
"#;

const APPROVAL: &str = r#"
name: approval
steps:
  - id: approve
    listen: { signal: approve, timeout: 5m }
  - id: ship
    depends_on: [approve]
    query: { capabilities: [shipping.ship] }
    input: { reservation: "${ .steps.approve.output.reservation }" }
output: "${ .steps.ship.output.reservation }"
"#;

const KID: &str = r#"
name: kid
steps:
  - { id: first, query: { capabilities: [payment.charge] }, input: { amount: "${ .input.n }" } }
  - { id: nap, wait: 10s, depends_on: [first] }
  - { id: second, query: { capabilities: [payment.charge] }, input: { amount: "${ .input.n + 1 }" }, depends_on: [nap] }
output: "${ .steps.second.output.amount }"
"#;

const PARENT: &str = r#"
name: parent
steps:
  - id: call
    workflow: { name: kid, input: { n: 40 } }
output: "${ .steps.call.output }"
"#;

async fn get_json(url: &str) -> Value {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    assert!(response.status().is_success(), "GET {url}: {}", response.status());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

async fn start(clients: &mut Clients, workflow: &str, input: Value) -> String {
    let request = pb::StartExecutionRequest {
        workflow: workflow.to_owned(),
        version: None,
        input_json: input.to_string(),
        idempotency_key: None,
    };
    clients.executions.start_execution(request).await.unwrap().into_inner().execution.unwrap().id
}

async fn get(clients: &mut Clients, id: &str) -> pb::Execution {
    let request = pb::GetExecutionRequest { id: id.to_owned() };
    clients.executions.get_execution(request).await.unwrap().into_inner().execution.unwrap()
}

fn task<'e>(execution: &'e pb::Execution, step: &str) -> Option<&'e pb::TaskStatus> {
    execution.tasks.iter().find(|t| t.step == step)
}

fn waiting(execution: &pb::Execution, step: &str) -> bool {
    task(execution, step).is_some_and(|t| t.state == pb::TaskState::Waiting as i32)
}

fn output(execution: &pb::Execution) -> Value {
    serde_json::from_str(execution.output_json.as_deref().unwrap_or("null")).unwrap()
}

/// How many times the execution's journal completes its `nap` task, read to its end.
async fn naps_completed(clients: &mut Clients, id: &str) -> usize {
    let request = pb::WatchExecutionRequest { id: id.to_owned(), from_sequence: 1 };
    let mut watch = clients.executions.watch_execution(request).await.unwrap().into_inner();
    let mut fired = 0;
    while let Some(event) = watch.message().await.unwrap() {
        let event = event.event.unwrap();
        if let Some(pb::event::Kind::TaskSucceeded(done)) = &event.kind
            && done.step == "nap"
        {
            fired += 1;
        }
        if matches!(event.kind, Some(pb::event::Kind::Completed(_))) {
            break;
        }
    }
    fired
}

/// The effects a service performed, per idempotency key.
async fn effects(service: &baton_examples::RunningService) -> BTreeMap<String, u64> {
    serde_json::from_value(get_json(&format!("http://{}/stats/keys", service.addr())).await).unwrap()
}

async fn stat(service: &baton_examples::RunningService, name: &str) -> u64 {
    get_json(&format!("http://{}/stats", service.addr())).await[name].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_a_timer_a_listen_and_a_child_each_resume_after_kill_9_with_every_effect_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&dir.path().join("data"), &[]).await;
    let options = baton_examples::ServiceOptions {
        baton: Some(server.url()),
        ttl: Duration::from_millis(600),
        latency: Duration::from_millis(15),
        ..Default::default()
    };
    let services = baton_examples::spawn_shop(&options).await.unwrap();
    let service = |id: &str| services.iter().find(|s| s.id().contains(id)).unwrap();
    let (inventory, payments, shipping) = (service("inventory"), service("payment"), service("shipping"));
    let mut clients = Clients::new(server.channel().await);
    clients.wait_services(3).await;
    for definition in [FAN, NAP, APPROVAL, KID, PARENT] {
        clients.apply(definition).await;
    }
    let fan = start(&mut clients, "fan", json!({"items": ITEMS})).await;
    let nap = start(&mut clients, "nap", json!({})).await;
    let approval = start(&mut clients, "approval", json!({})).await;
    let parent = start(&mut clients, "parent", json!({})).await;

    // Kill once every run is caught mid-way: the loop part done, the timer and the child's
    // timer armed, the listen waiting. The timers are long enough to be caught armed while a
    // loaded machine runs the loop's first 200 iterations.
    let deadline = Instant::now() + Duration::from_secs(30);
    let kid = loop {
        let parent_view = get(&mut clients, &parent).await;
        let kid = task(&parent_view, "call").and_then(|t| t.child_execution_id.clone());
        let caught = stat(inventory, "effects").await >= 200
            && waiting(&get(&mut clients, &nap).await, "nap")
            && waiting(&get(&mut clients, &approval).await, "approve");
        if caught
            && let Some(kid) = kid.clone()
            && waiting(&get(&mut clients, &kid).await, "nap")
        {
            break kid;
        }
        assert!(Instant::now() < deadline, "the runs did not reach their waits\n{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    server.kill9();
    let done_before_kill = stat(inventory, "effects").await;
    assert!(done_before_kill < ITEMS as u64, "the loop ended before the kill: {done_before_kill}");

    server.restart().await;
    let mut clients = Clients::new(server.channel().await);
    clients.wait_services(3).await;
    let signal = pb::SignalExecutionRequest {
        id: approval.clone(),
        name: "approve".to_owned(),
        data_json: json!({"reservation": "r-7"}).to_string(),
    };
    clients.executions.signal_execution(signal).await.unwrap();
    let ids = [fan.clone(), nap.clone(), approval.clone(), parent.clone(), kid.clone()];
    clients.all_completed(&ids, Duration::from_secs(120), &server).await;

    let skus: Vec<String> = (0..ITEMS).map(|n| format!("item-{n}")).collect();
    assert_eq!(output(&clients.finished(&fan).await), json!(skus));
    assert_eq!(output(&clients.finished(&nap).await), json!(2.0));
    assert_eq!(output(&clients.finished(&approval).await), json!("r-7"));
    assert_eq!(output(&clients.finished(&parent).await), json!(41.0));

    // Every iteration's effect once, and only the iterations in flight at the kill were called
    // again (the services answer a repeated key from their store, without a second effect).
    let reserved = effects(inventory).await;
    let iterations: Vec<_> = reserved.iter().filter(|(key, _)| key.starts_with(&format!("{fan}/"))).collect();
    assert_eq!(iterations.len(), ITEMS, "{iterations:?}");
    assert!(iterations.iter().all(|(_, n)| **n == 1), "{iterations:?}");
    let repeated = stat(inventory, "duplicates").await;
    assert!(repeated <= CONCURRENCY, "{repeated} finished iterations were called again");
    let charged = effects(payments).await;
    for key in [format!("{nap}/before"), format!("{nap}/after"), format!("{kid}/first"), format!("{kid}/second")] {
        assert_eq!(charged.get(&key), Some(&1), "{key}: {charged:?}");
    }
    assert_eq!(charged.len(), 4, "{charged:?}");
    assert_eq!(effects(shipping).await, BTreeMap::from([(format!("{approval}/ship"), 1)]));
    // Each timer fired once: one completion of the `nap` task in each journal.
    for id in [&nap, &kid] {
        assert_eq!(naps_completed(&mut clients, id).await, 1, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_timers_complete_after_a_restart_in_the_middle() {
    const EXECUTIONS: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    // 48 callers share one connection: the per-connection rate limit guards the server and is
    // not what this test is about.
    let mut server = ServerProcess::start(&dir.path().join("data"), &["--rate-limit", "1000000"]).await;
    let mut clients = Clients::new(server.channel().await);
    clients
        .apply("name: timer\nsteps:\n  - { id: nap, wait: { until: \"${ .input.at }\" } }\n  - { id: done, set: \"${ .input.n }\", depends_on: [nap] }\noutput: \"${ .steps.done.output }\"\n")
        .await;
    // Due 1 to 2 s after it starts; started by 32 callers at once.
    let mut starts = JoinSet::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..32 {
        let (mut clients, next) = (clients.clone(), std::sync::Arc::clone(&next));
        starts.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= EXECUTIONS {
                    return ids;
                }
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
                let at = now + 1.0 + (n % 1000) as f64 / 1000.0;
                ids.push((n, start(&mut clients, "timer", json!({"n": n, "at": at})).await));
            }
        });
    }
    let mut ids = Vec::with_capacity(EXECUTIONS);
    while let Some(started) = starts.join_next().await {
        ids.extend(started.unwrap());
    }
    server.kill9();
    server.restart().await;
    let mut clients = Clients::new(server.channel().await);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut checks = JoinSet::new();
    for chunk in ids.chunks(EXECUTIONS / 16) {
        let (mut clients, chunk) = (clients.clone(), chunk.to_vec());
        checks.spawn(async move {
            for (n, id) in chunk {
                let done = loop {
                    let execution = get(&mut clients, &id).await;
                    if execution.state != pb::ExecutionState::Running as i32 {
                        break execution;
                    }
                    assert!(Instant::now() < deadline, "{id} still running after 180 s");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                assert_eq!(done.state, pb::ExecutionState::Completed as i32, "{id}: {:?}", done.error);
                assert_eq!(output(&done), json!(n));
                let nap = task(&done, "nap").unwrap();
                assert_eq!(nap.state, pb::TaskState::Succeeded as i32, "{id}");
            }
        });
    }
    while let Some(checked) = checks.join_next().await {
        checked.unwrap();
    }
    // A sample of journals: one completion of the timer each.
    for (_, id) in ids.iter().step_by(EXECUTIONS / 20) {
        assert_eq!(naps_completed(&mut clients, id).await, 1, "{id}");
    }
    drop(clients);
    server.kill9();
}
