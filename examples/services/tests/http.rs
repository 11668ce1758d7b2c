//! Real services on 127.0.0.1, called the way Baton calls them (through the executor's
//! `HttpInvoker`) and read through their HTTP stats.

use std::sync::Arc;
use std::time::Duration;

use baton_core::{ExecutionId, ServiceId};
use baton_examples::{Kind, RunningService, ServiceOptions, Stats};
use baton_executor::{Call, Failure, HttpConfig, HttpInvoker, Invoker};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// An invoker that reaches `service` and nothing else.
fn invoker(service: &RunningService) -> HttpInvoker {
    let (id, url) = (service.id().to_owned(), service.url().to_owned());
    let spec = serde_json::json!({"id": id, "endpoint": {"protocol": "http", "url": url}, "capabilities": ["test"]});
    let spec = Arc::new(baton_core::ServiceSpec::from_json(&spec.to_string()).unwrap());
    HttpConfig::default().build(Arc::new(move |s: &ServiceId| (s.as_str() == id).then(|| Arc::clone(&spec))))
}

fn call(service: &RunningService, execution: ExecutionId, step: &str, attempt: u32, payload: Value) -> Call {
    Call::new(execution, step.parse().unwrap(), attempt, ServiceId::new(service.id()).unwrap(), payload)
}

/// A request to `url` with an optional idempotency key: the status and the JSON body.
async fn request(method: &str, url: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = hyper::Request::builder().method(method).uri(url).header("content-type", "application/json");
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    let response = client.request(builder.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn http_stats(service: &RunningService) -> Value {
    let base = format!("http://{}", service.addr());
    let (status, stats) = request("GET", &format!("{base}/stats"), None, "").await;
    assert_eq!(status, 200);
    let stats_struct = service.stats();
    assert_eq!(stats, serde_json::to_value(stats_struct).unwrap());
    stats
}

fn stats(requests: u64, effects: u64, duplicates: u64, failures: u64) -> Stats {
    Stats { requests, effects, duplicates, failures }
}

#[tokio::test]
async fn a_key_performs_its_effect_once_however_often_it_is_sent() {
    let inventory = baton_examples::spawn(Kind::Inventory, ServiceOptions::default()).await.unwrap();
    let invoker = invoker(&inventory);
    let execution = ExecutionId::generate();
    let order = json!({"sku": "book-42", "quantity": 2});
    let first = invoker.invoke(call(&inventory, execution, "reserve", 1, order.clone())).await.unwrap();
    assert_eq!(first["id"], "res-inventory-000001");
    assert_eq!(first["reservation"], first["id"]);
    assert_eq!(
        (&first["sku"], &first["quantity"], &first["service"]),
        (&json!("book-42"), &json!(2), &json!("inventory"))
    );
    // Retries, a failover and a recovery all send the same key: the stored answer comes back.
    for attempt in 2..=4 {
        let again = invoker.invoke(call(&inventory, execution, "reserve", attempt, order.clone())).await.unwrap();
        assert_eq!(again, first);
    }
    // Another step (another key) is another effect.
    let other = invoker.invoke(call(&inventory, execution, "reserve-wrap", 1, json!({"sku": "wrap"}))).await.unwrap();
    assert_eq!((&other["id"], &other["quantity"]), (&json!("res-inventory-000002"), &json!(1)));

    assert_eq!(inventory.stats(), stats(5, 2, 3, 0));
    assert_eq!(http_stats(&inventory).await, json!({"requests": 5, "effects": 2, "duplicates": 3, "failures": 0}));
    let (status, keys) = request("GET", &format!("http://{}/stats/keys", inventory.addr()), None, "").await;
    assert_eq!(status, 200);
    assert_eq!(keys, json!({format!("{execution}/reserve"): 1, format!("{execution}/reserve-wrap"): 1}));
    assert_eq!(serde_json::to_value(inventory.handle().key_effects()).unwrap(), keys);
    inventory.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_requests_with_one_key_wait_for_the_one_effect() {
    let options = ServiceOptions { latency: Duration::from_millis(100), ..Default::default() };
    let payments = baton_examples::spawn(Kind::Payments, options).await.unwrap();
    let invoker = invoker(&payments);
    let execution = ExecutionId::generate();
    let calls = (1..=8).map(|attempt| {
        let (invoker, call) = (invoker.clone(), call(&payments, execution, "charge", attempt, json!({"amount": 12.5})));
        async move { invoker.invoke(call).await }
    });
    let answers: Vec<Value> = futures_join(calls).await.into_iter().map(Result::unwrap).collect();
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0], json!({"receipt": "rcpt-payments-000001", "amount": 12.5, "service": "payments"}));
    assert_eq!(payments.stats(), stats(8, 1, 7, 0));
    payments.shutdown().await.unwrap();
}

/// Runs the futures concurrently on their own tasks and collects their outputs in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for task in tasks {
        outputs.push(task.await.unwrap());
    }
    outputs
}

#[tokio::test]
async fn bad_input_is_a_permanent_400_without_an_effect() {
    let shipping = baton_examples::spawn(Kind::Shipping, ServiceOptions::default()).await.unwrap();
    let invoker = invoker(&shipping);
    let execution = ExecutionId::generate();
    let failure: Failure =
        invoker.invoke(call(&shipping, execution, "ship", 1, json!({"receipt": "r"}))).await.unwrap_err();
    assert_eq!((failure.retryable, failure.class.as_str()), (false, "http_400"));
    // The body is JSON, so the message quotes it with its escapes.
    assert!(failure.message.contains(r#"{"error":"field \"reservation\" is required"}"#), "{failure}");
    // The key stays free: a corrected request performs the effect.
    let shipped = invoker
        .invoke(call(&shipping, execution, "ship", 2, json!({"reservation": "res-1", "paid": "rcpt-1"})))
        .await
        .unwrap();
    assert_eq!(shipped["tracking"], "trk-shipping-000001");
    assert_eq!(shipped["receipt"], "rcpt-1");
    let (status, body) = request("POST", shipping.url(), Some("k"), "{not json").await;
    assert_eq!((status, body["error"].as_str().unwrap().contains("not JSON")), (400, true));
    assert_eq!(shipping.stats(), stats(3, 1, 0, 2));
    shipping.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failure_before_the_effect_leaves_the_key_to_the_retry() {
    let options = ServiceOptions { fail_rate: 0.5, seed: Some(7), ..Default::default() };
    let inventory = baton_examples::spawn(Kind::Inventory, options).await.unwrap();
    let invoker = invoker(&inventory);
    let execution = ExecutionId::generate();
    let mut failures = 0;
    let answer = loop {
        match invoker.invoke(call(&inventory, execution, "reserve", failures + 1, json!({"sku": "a"}))).await {
            Ok(answer) => break answer,
            Err(failure) => {
                assert_eq!((failure.retryable, failure.class.as_str()), (true, "http_503"), "{failure}");
                assert!(failure.message.contains("injected failure"), "{failure}");
                failures += 1;
                assert!(failures < 50, "the injected failures never stopped");
            }
        }
    };
    assert_eq!(answer["id"], "res-inventory-000001");
    assert_eq!(inventory.stats(), stats(u64::from(failures) + 1, 1, 0, u64::from(failures)));
    inventory.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_lost_answer_is_given_again_to_the_retry() {
    // Over a few seeds the first lost answer is a 503 for some and a cut connection for others;
    // either way the retry learns the stored answer.
    let mut seen = Vec::new();
    for seed in 0..64 {
        let options = ServiceOptions { lose_rate: 1.0, seed: Some(seed), ..Default::default() };
        let payments = baton_examples::spawn(Kind::Payments, options).await.unwrap();
        let invoker = invoker(&payments);
        let execution = ExecutionId::generate();
        let lost = invoker.invoke(call(&payments, execution, "charge", 1, json!({"amount": 3}))).await.unwrap_err();
        let how = match lost.class.as_str() {
            "http_503" => {
                assert!(lost.message.contains("response lost"), "{lost}");
                "503"
            }
            // The headers came, then the connection broke.
            "connect" => "cut",
            other => panic!("a lost answer of class {other}: {lost}"),
        };
        assert!(lost.retryable, "{lost}");
        // The card was charged once; the retry learns the receipt instead of charging again.
        let retried = invoker.invoke(call(&payments, execution, "charge", 2, json!({"amount": 3}))).await.unwrap();
        assert_eq!(retried["receipt"], "rcpt-payments-000001");
        assert_eq!(payments.stats(), stats(2, 1, 1, 1), "{how}");
        payments.shutdown().await.unwrap();
        if !seen.contains(&how) {
            seen.push(how);
        }
        if seen.len() == 2 {
            return;
        }
    }
    panic!("64 seeds lost answers only as {seen:?}");
}

#[tokio::test]
async fn without_a_key_every_request_is_an_effect() {
    let inventory = baton_examples::spawn(Kind::Inventory, ServiceOptions::default()).await.unwrap();
    for n in 1..=2 {
        let (status, body) = request("POST", inventory.url(), None, r#"{"order": {"sku": "a", "quantity": 3}}"#).await;
        assert_eq!(
            (status, &body["id"], &body["quantity"]),
            (200, &json!(format!("res-inventory-00000{n}")), &json!(3))
        );
    }
    assert_eq!(inventory.stats(), stats(2, 2, 0, 0));
    assert_eq!(inventory.handle().key_effects().len(), 0);
    let (status, health) = request("GET", &format!("http://{}/health", inventory.addr()), None, "").await;
    assert_eq!((status, health), (200, json!({"status": "ok", "id": "inventory", "kind": "inventory"})));
    inventory.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_instances_of_a_kind_serve_side_by_side_and_a_killed_one_refuses() {
    let spawn = |id: &str| {
        baton_examples::spawn(Kind::Inventory, ServiceOptions { id: Some(id.to_owned()), ..Default::default() })
    };
    let (a, b) = (spawn("inventory-a").await.unwrap(), spawn("inventory-b").await.unwrap());
    assert_ne!(a.addr(), b.addr());
    let execution = ExecutionId::generate();
    let from_a = invoker(&a).invoke(call(&a, execution, "reserve", 1, json!({"sku": "x"}))).await.unwrap();
    assert_eq!(from_a["id"], "res-inventory-a-000001");
    let invoker_a = invoker(&a);
    let address = a.addr();
    a.kill().await.unwrap();
    let refused = invoker_a.invoke(call_to("inventory-a", execution, "reserve", 2)).await.unwrap_err();
    assert_eq!((refused.retryable, refused.class.as_str()), (true, "connect"), "{refused}");
    assert!(tokio::net::TcpStream::connect(address).await.is_err(), "a killed service still accepts");
    // The failover target has never seen the key: it performs the effect itself.
    let from_b = invoker(&b).invoke(call(&b, execution, "reserve", 3, json!({"sku": "x"}))).await.unwrap();
    assert_eq!(from_b["id"], "res-inventory-b-000001");
    b.shutdown().await.unwrap();
}

fn call_to(service: &str, execution: ExecutionId, step: &str, attempt: u32) -> Call {
    Call {
        execution,
        step: step.parse().unwrap(),
        attempt,
        service: ServiceId::new(service).unwrap(),
        payload: json!({"sku": "x"}),
        request: None,
        timeout: None,
        trace: None,
    }
}

#[tokio::test]
async fn a_killed_service_abandons_effects_in_flight() {
    let options = ServiceOptions { latency: Duration::from_secs(30), ..Default::default() };
    let shipping = baton_examples::spawn(Kind::Shipping, options).await.unwrap();
    let handle = shipping.handle();
    let url = shipping.url().to_owned();
    let pending = tokio::spawn(async move { request("POST", &url, Some("e/ship"), r#"{"reservation": "r"}"#).await });
    // Poll until the request has arrived, then kill the service under it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handle.stats().requests == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the request never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shipping.kill().await.unwrap();
    let (status, body) = pending.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(handle.stats(), stats(1, 0, 0, 1));
}

#[tokio::test]
async fn the_binary_serves_until_stopped() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton-example-service"))
        .args(["payments", "--listen", "127.0.0.1:0", "--id", "pay-bin", "--latency", "1ms"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
    // "payments pay-bin listening on 127.0.0.1:PORT (POST http://127.0.0.1:PORT/charge)"
    let url = line.split("(POST ").nth(1).unwrap().trim_end_matches(')').to_owned();
    assert!(line.starts_with("payments pay-bin listening on 127.0.0.1:"), "{line}");
    let (status, body) = request("POST", &url, Some("x/charge"), r#"{"amount": 1}"#).await;
    assert_eq!((status, &body["receipt"]), (200, &json!("rcpt-pay-bin-000001")));
    child.kill().await.unwrap();
}
