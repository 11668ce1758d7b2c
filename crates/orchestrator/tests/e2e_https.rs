//! `baton serve` calling the example services over HTTPS with a bearer token from its secrets
//! directory, and the example gRPC service for one step: the order workflow completes, the
//! CLI's `--watch` names the services that answered, and the token's value appears in none of
//! what a person or a script can see (logs, events, errors, metrics, service answers,
//! `--output json`); the same token from a `BATON_SECRET_*` variable instead.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use baton_examples::grpc::{GrpcOptions, spawn_grpc};
use baton_examples::pki::TestPki;
use baton_examples::{Bearer, ServiceOptions};
use serde_json::Value;
use support::{ServerProcess, scrape};

/// The order workflow with a last step on the gRPC notifications service, found by capability.
const ORDER_NOTIFY: &str = r#"
name: order-notify
defaults:
  timeout: 5s
  retry: {max_attempts: 3, initial_backoff: 50ms}
steps:
  - id: reserve
    query: {capabilities: [inventory.reserve]}
    input: {sku: "${ .input.sku }", quantity: "${ .input.quantity }"}
  - id: charge
    query: {capabilities: [payment.charge]}
    input: {amount: "${ .input.amount }"}
  - id: ship
    query: {capabilities: [shipping.ship]}
    depends_on: [reserve, charge]
    input: {reservation: "${ .steps.reserve.output.id }", receipt: "${ .steps.charge.output.receipt }"}
  - id: notify
    query: {capabilities: [customer.notify], protocols: [grpc]}
    depends_on: [ship]
    input: {tracking: "${ .steps.ship.output.tracking }", channel: sms}
output:
  tracking: "${ .steps.ship.output.tracking }"
  notification: "${ .steps.notify.output.notification_id }"
"#;

/// The token: a value that occurs nowhere else, so any sighting of it is a leak.
const TOKEN: &str = "tok-7f3a9c1e5b2d-never-print-me";

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

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
async fn the_order_workflow_runs_over_https_with_a_bearer_token_that_never_shows() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("shop");
    let ca = dir.path().join("shop-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("shop-token"), format!("{TOKEN}\n")).unwrap();
    let flags =
        ["--services-ca", ca.to_str().unwrap(), "--secrets-dir", secrets.to_str().unwrap(), "--log-level", "debug"];
    let server = ServerProcess::start(&dir.path().join("data"), &flags).await;

    let tls = baton_examples::tls::server_config(pki.server_cert_pem.as_bytes(), pki.server_key_pem.as_bytes(), None)
        .unwrap();
    let options = ServiceOptions {
        baton: Some(server.url()),
        tls: Some(tls),
        bearer: Some(Bearer { secret: "shop-token".to_owned(), token: TOKEN.to_owned() }),
        ..ServiceOptions::default()
    };
    let services = baton_examples::spawn_shop(&options).await.unwrap();
    for service in &services {
        assert!(service.url().starts_with("https://127.0.0.1:"), "{}", service.url());
        tokio::time::timeout(Duration::from_secs(30), service.handle().registered()).await.unwrap();
    }

    // Without reflection: it registers its descriptor set.
    let notifications =
        spawn_grpc(GrpcOptions { baton: Some(server.url()), reflection: false, ..GrpcOptions::default() })
            .await
            .unwrap();
    tokio::time::timeout(Duration::from_secs(30), notifications.registered()).await.unwrap();

    let applied = cli(&server, &["workflow", "apply", "examples/workflows/order.yaml"]).await;
    assert!(applied.status.success(), "{}", text(&applied));
    let input = r#"{"sku": "book-1", "quantity": 1, "amount": 12.5}"#;
    let done = cli(&server, &["--output", "json", "run", "order", "--input", input, "--wait"]).await;
    assert!(done.status.success(), "{}", text(&done));
    let done: Value = serde_json::from_slice(&done.stdout).unwrap();
    let id = done["id"].as_str().or_else(|| done["execution"]["id"].as_str()).unwrap().to_owned();
    assert!(done.to_string().contains("trk-shipping-"), "{done}");
    for service in &services {
        assert_eq!(service.stats().effects, 1, "{} did its work once", service.id());
    }

    // Watched: each step is named with the service that answered, the gRPC one included.
    let notify = dir.path().join("order-notify.yaml");
    std::fs::write(&notify, ORDER_NOTIFY).unwrap();
    let applied = cli(&server, &["workflow", "apply", notify.to_str().unwrap()]).await;
    assert!(applied.status.success(), "{}", text(&applied));
    let watched = cli(&server, &["run", "order-notify", "--input", input, "--watch"]).await;
    let shown = text(&watched);
    assert!(watched.status.success(), "{shown}");
    for line in [
        "reserve: scheduled on inventory",
        "charge: scheduled on payments",
        "ship: scheduled on shipping",
        "notify: scheduled on notifications",
    ] {
        assert!(shown.contains(line), "{line:?} missing from\n{shown}");
    }
    assert!(!shown.contains("query."), "a stand-in id shows:\n{shown}");
    assert!(shown.contains("ntf-notifications-000001"), "{shown}");
    assert_eq!(notifications.stats().effects, 1);

    // A run that fails at a service (bad input: a 400), so an error message is seen too.
    let bad =
        cli(&server, &["--output", "json", "run", "order", "--input", r#"{"sku": "", "amount": 1}"#, "--wait"]).await;
    assert!(!bad.status.success(), "{}", text(&bad));
    assert!(text(&bad).contains("http_400"), "{}", text(&bad));

    // Everything a person or a script can see, gathered and searched for the token.
    let mut seen = vec![text(&bad)];
    for args in [
        &["--output", "json", "exec", "get", &id][..],
        &["--output", "json", "exec", "list"],
        &["exec", "get", &id],
        &["--output", "json", "exec", "watch", &id],
        &["--output", "json", "service", "list"],
        &["--output", "json", "service", "get", "inventory"],
        &["service", "get", "payments"],
    ] {
        let output = cli(&server, args).await;
        assert!(output.status.success(), "{args:?}: {}", text(&output));
        seen.push(text(&output));
    }
    let table = &seen[2];
    assert!(table.contains("inventory") && !table.contains("query."), "{table}");
    let service = &seen[5];
    assert!(service.contains("shop-token"), "the spec names the secret: {service}");
    seen.push(scrape(server.metrics).await);
    seen.push(server.log_text());
    for (i, surface) in seen.iter().enumerate() {
        assert!(!surface.contains(TOKEN), "surface {i} shows the token:\n{surface}");
    }
    let log = server.log_text();
    assert!(log.contains("services_ca"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_an_environment_variable_is_presented_and_never_shown() {
    const ENV_TOKEN: &str = "tok-env-4d1c8e92a7-never-print-me";
    let dir = tempfile::tempdir().unwrap();
    // No --secrets-dir: the secret `shop-token` is found as BATON_SECRET_SHOP_TOKEN.
    let server = ServerProcess::start_with_env(
        &dir.path().join("data"),
        &["--log-level", "debug"],
        &[("BATON_SECRET_SHOP_TOKEN", ENV_TOKEN)],
    )
    .await;
    let options = ServiceOptions {
        baton: Some(server.url()),
        bearer: Some(Bearer { secret: "shop-token".to_owned(), token: ENV_TOKEN.to_owned() }),
        ..ServiceOptions::default()
    };
    let services = baton_examples::spawn_shop(&options).await.unwrap();
    for service in &services {
        tokio::time::timeout(Duration::from_secs(30), service.handle().registered()).await.unwrap();
    }
    let applied = cli(&server, &["workflow", "apply", "examples/workflows/order.yaml"]).await;
    assert!(applied.status.success(), "{}", text(&applied));
    let input = r#"{"sku": "book-1", "quantity": 1, "amount": 12.5}"#;
    let done = cli(&server, &["--output", "json", "run", "order", "--input", input, "--wait"]).await;
    assert!(done.status.success(), "the services took the token: {}", text(&done));
    for service in &services {
        assert_eq!(service.stats().effects, 1, "{} did its work once", service.id());
    }
    let mut seen = vec![text(&done)];
    let listed = cli(&server, &["--output", "json", "exec", "list"]).await;
    seen.push(text(&listed));
    seen.push(scrape(server.metrics).await);
    seen.push(server.log_text());
    for (i, surface) in seen.iter().enumerate() {
        assert!(!surface.contains(ENV_TOKEN), "surface {i} shows the token:\n{surface}");
    }
}
