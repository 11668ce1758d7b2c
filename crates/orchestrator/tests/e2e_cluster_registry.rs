//! The registry a cluster shares, with three (then four) real `baton serve --cluster` nodes
//! on one throwaway PostgreSQL database: the example shop registers with node A only and
//! executions started on B and C find and call it; a deregistration through C leaves A's
//! finds within about a second; a service whose heartbeats stop turns critical on every node
//! after its TTL, judged by the database's clock, and not before; one node, not three, runs
//! a service's HTTP probes and every node takes its verdict; a node that joins later knows
//! every service as soon as it serves.

#![allow(clippy::print_stderr, reason = "the test logs how long changes took to reach the other nodes")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use baton_grpc::pb;
use baton_store::testing::PgCluster;
use support::{Clients, ServerProcess, example};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn node(url: &str, name: &str, dir: &std::path::Path) -> ServerProcess {
    let data = dir.join(name);
    ServerProcess::start(&data, &["--store", url, "--cluster", "--node-id", name, "--lease-ttl", "3s"]).await
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap()
}

/// A service of capability `capability` with `check`.
fn service(id: &str, capability: &str, check: pb::health_check::Kind, interval: Option<Duration>) -> pb::ServiceSpec {
    pb::ServiceSpec {
        id: id.to_owned(),
        endpoint: Some(pb::Endpoint {
            kind: Some(pb::endpoint::Kind::Http(pb::endpoint::Http { url: "http://127.0.0.1:9/x".to_owned() })),
        }),
        capabilities: vec![capability.to_owned()],
        qos: Some(pb::Qos { latency_p50_ms: 1.0, latency_p99_ms: 5.0, availability: Some(1.0), ..Default::default() }),
        capacity: 8,
        health_check: Some(pb::HealthCheck {
            kind: Some(check),
            interval: interval.map(proto_duration),
            healthy_threshold: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ttl(ttl: Duration) -> pb::health_check::Kind {
    pb::health_check::Kind::Ttl(pb::health_check::Ttl { ttl: Some(proto_duration(ttl)) })
}

/// How many passing services of `capability` a node finds.
async fn found(clients: &mut Clients, capability: &str) -> usize {
    let requirements = pb::ServiceRequirements { capabilities: vec![capability.to_owned()], ..Default::default() };
    let request = pb::FindServicesRequest { requirements: Some(requirements), limit: 16 };
    clients.registry.find_services(request).await.unwrap().into_inner().candidates.len()
}

async fn health(clients: &mut Clients, id: &str) -> Option<pb::Health> {
    let request = pb::GetServiceRequest { id: id.to_owned() };
    let view = clients.registry.get_service(request).await.ok()?.into_inner();
    Some(pb::Health::try_from(view.service?.status?.health).unwrap())
}

/// Polls `check` every 20 ms until it holds; how long that took. Fails after `within`.
async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// An HTTP health endpoint on loopback that answers 200 and counts the probes it gets.
async fn probed_endpoint() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    let probes = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&probes);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0_u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, probes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_registry() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = cluster.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let a = node(&url, "a", dir.path()).await;
    let b = node(&url, "b", dir.path()).await;
    let c = node(&url, "c", dir.path()).await;
    let (mut on_a, mut on_b, mut on_c) =
        (Clients::new(a.channel().await), Clients::new(b.channel().await), Clients::new(c.channel().await));

    // The shop registers and heartbeats with node A only; B and C learn of it from the table.
    let options = baton_examples::ServiceOptions {
        baton: Some(a.url()),
        ttl: Duration::from_secs(30),
        latency: Duration::from_millis(5),
        capacity: 64,
        ..Default::default()
    };
    let shop = baton_examples::spawn_shop(&options).await.unwrap();
    on_a.wait_services(3).await;
    on_b.wait_services(3).await;
    on_c.wait_services(3).await;
    on_a.apply(&example("pipeline.yaml")).await;
    // B and C own partitions, so they run the executions they start (a node gives an execution
    // it starts an id in a partition of its own).
    until("B and C own partitions", Duration::from_secs(60), async || {
        let status = baton_cluster::status(&url).await.unwrap();
        ["b", "c"].iter().all(|name| status.nodes.iter().any(|n| n.id == *name && n.partitions >= 1))
    })
    .await;

    // Executions started on B and C, and run there, find the services registered through A.
    let mut ids = Vec::new();
    for n in 0..30 {
        let clients = if n % 2 == 0 { &mut on_b } else { &mut on_c };
        let request = pb::StartExecutionRequest {
            workflow: "pipeline".to_owned(),
            version: None,
            input_json: r#"{"sku": "book-1", "amount": 3.5}"#.to_owned(),
            idempotency_key: Some(format!("shared-{n}")),
        };
        let started = clients.executions.start_execution(request).await.unwrap().into_inner();
        ids.push(started.execution.unwrap().id);
    }
    on_b.all_completed(&ids, Duration::from_secs(120), &b).await;
    let calls: u64 = shop.iter().map(|s| s.handle().key_effects().values().sum::<u64>()).sum();
    assert_eq!(calls, 30 * 5, "each step of each execution called once");

    // A deregistration through C leaves A's finds within about a second.
    on_a.registry
        .register(pb::RegisterRequest { spec: Some(service("extra", "x.extra", ttl(Duration::from_secs(60)), None)) })
        .await
        .unwrap();
    let seen = until("C finds a service registered through A", Duration::from_secs(5), async || {
        found(&mut on_c, "x.extra").await == 1
    })
    .await;
    on_c.registry.deregister(pb::DeregisterRequest { id: "extra".to_owned() }).await.unwrap();
    let gone = until("A no longer finds a service deregistered through C", Duration::from_secs(2), async || {
        found(&mut on_a, "x.extra").await == 0
    })
    .await;
    eprintln!("a registration reached C after {seen:?}, a deregistration reached A after {gone:?}");

    // A service heartbeating through C stays passing everywhere; once its heartbeats stop it
    // turns critical on every node after its TTL, not before.
    let beat_ttl = Duration::from_secs(2);
    on_b.registry
        .register(pb::RegisterRequest { spec: Some(service("beat", "x.beat", ttl(beat_ttl), None)) })
        .await
        .unwrap();
    let mut last_beat = Instant::now();
    for _ in 0..8 {
        last_beat = Instant::now();
        on_c.registry.heartbeat(pb::HeartbeatRequest { id: "beat".to_owned() }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    for clients in [&mut on_a, &mut on_b, &mut on_c] {
        assert_eq!(found(clients, "x.beat").await, 1, "passing while it heartbeats (every 400 ms, TTL 2 s)");
    }
    for clients in [&mut on_a, &mut on_b, &mut on_c] {
        until("the service is critical after its TTL", Duration::from_secs(5), async || {
            health(clients, "beat").await == Some(pb::Health::Critical)
        })
        .await;
    }
    let critical_after = last_beat.elapsed();
    assert!(critical_after >= beat_ttl, "critical {critical_after:?} after the last heartbeat, before its TTL");
    eprintln!("critical on every node {critical_after:?} after the last heartbeat (TTL {beat_ttl:?})");

    // One node probes a service, not three, and every node takes its verdict.
    let (health_url, probes) = probed_endpoint().await;
    let check = pb::health_check::Kind::Http(pb::health_check::Http { url: health_url });
    let probed = service("probed", "x.probed", check, Some(Duration::from_secs(1)));
    on_c.registry.register(pb::RegisterRequest { spec: Some(probed) }).await.unwrap();
    for clients in [&mut on_a, &mut on_b, &mut on_c] {
        until("a probed service passes on every node", Duration::from_secs(10), async || {
            health(clients, "probed").await == Some(pb::Health::Passing)
        })
        .await;
    }
    let (before, window) = (probes.load(Ordering::SeqCst), Instant::now());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (count, elapsed) = (probes.load(Ordering::SeqCst) - before, window.elapsed());
    // Every second by one node: about 4; by three nodes it would be about 12.
    let one_node = elapsed.as_secs() as usize + 2;
    assert!((2..=one_node).contains(&count), "{count} probes in {elapsed:?}: more than one node probes");
    eprintln!("{count} probes in {elapsed:?} at one a second");

    // A node that joins later knows every service as soon as it serves.
    let d = node(&url, "d", dir.path()).await;
    let mut on_d = Clients::new(d.channel().await);
    let listed = on_d.registry.list_services(pb::ListServicesRequest::default()).await.unwrap().into_inner();
    let mut names: Vec<String> = listed.services.iter().map(|s| s.spec.as_ref().unwrap().id.clone()).collect();
    names.sort();
    assert_eq!(names, ["beat", "inventory", "payments", "probed", "shipping"]);
    assert_eq!(health(&mut on_d, "beat").await, Some(pb::Health::Critical));
    assert_eq!(found(&mut on_d, "x.probed").await, 1);
    drop((a, b, c, d));
}
