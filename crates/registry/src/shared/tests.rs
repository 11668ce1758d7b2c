use std::time::Duration;

use baton_core::fakes::{FakeClock, InMemoryServiceTable};
use baton_core::{Health, Registration, ServiceDirectory, ServiceId, ServiceRequirements, ServiceSpec, ServiceTable};
use serde_json::json;

use super::Shared;
use crate::Registry;

fn spec(id: &str, check: serde_json::Value, capacity: u32) -> ServiceSpec {
    let definition = json!({
        "id": id,
        "endpoint": {"protocol": "http", "url": "http://127.0.0.1:9/x"},
        "capabilities": ["x"],
        "capacity": capacity,
        "health_check": check,
    });
    ServiceSpec::from_json(&definition.to_string()).unwrap()
}

fn ttl(seconds: u64) -> serde_json::Value {
    json!({"kind": "ttl", "ttl": format!("{seconds}s")})
}

/// Two servers over one table.
fn pair(table: &InMemoryServiceTable) -> (Shared<InMemoryServiceTable>, Shared<InMemoryServiceTable>) {
    (Shared::new(Registry::default(), table.clone()), Shared::new(Registry::default(), table.clone()))
}

fn found(shared: &Shared<InMemoryServiceTable>) -> usize {
    shared.find(&ServiceRequirements::capability("x"), 16).unwrap().total
}

#[tokio::test(start_paused = true)]
async fn a_registration_through_one_server_reaches_the_other_and_so_does_its_removal() {
    let table = InMemoryServiceTable::default();
    let (a, b) = pair(&table);
    assert_eq!(a.register(spec("pay", ttl(3), 4)).await.unwrap(), Registration::Created);
    assert_eq!(found(&a), 1, "the server that took it sees it at once");
    assert_eq!(found(&b), 0);
    b.sync().await.unwrap();
    assert_eq!(found(&b), 1);
    assert_eq!(b.register(spec("pay", ttl(3), 5)).await.unwrap(), Registration::Updated);
    b.deregister(&ServiceId::new("pay").unwrap()).await.unwrap();
    a.sync().await.unwrap();
    assert_eq!(found(&a), 0);
    let ghost = ServiceId::new("pay").unwrap();
    assert_eq!(a.deregister(&ghost).await.unwrap_err(), baton_core::Error::UnknownService(ghost));
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_reaches_a_server_that_has_not_synced_since_the_registration() {
    let table = InMemoryServiceTable::default();
    let (a, b) = pair(&table);
    a.register(spec("pay", ttl(3), 4)).await.unwrap();
    let status = b.heartbeat(&ServiceId::new("pay").unwrap()).await.unwrap();
    assert_eq!(status.health, Health::Passing);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_are_written_once_per_third_of_the_ttl_and_the_held_one_later() {
    let clock = FakeClock::default();
    let table = InMemoryServiceTable::on(clock.clone());
    let (a, _) = pair(&table);
    a.register(spec("pay", ttl(3), 4)).await.unwrap();
    let cursor = table.changes(None).await.unwrap().cursor;
    let id = ServiceId::new("pay").unwrap();
    for _ in 0..9 {
        tokio::time::advance(Duration::from_millis(100)).await;
        clock.advance(Duration::from_millis(100));
        a.heartbeat(&id).await.unwrap();
    }
    assert!(table.changes(Some(cursor)).await.unwrap().changes.is_empty(), "held back within the window");
    tokio::time::advance(Duration::from_millis(200)).await;
    clock.advance(Duration::from_millis(200));
    a.round().await;
    let written = table.changes(Some(cursor)).await.unwrap();
    assert_eq!(written.changes.len(), 1, "the held heartbeat is written once its window passed");
    // It was dated back to when it came: 2.8 s of the 3 s TTL are still to run.
    clock.advance(Duration::from_millis(2_700));
    assert_eq!(table.expire().await.unwrap(), 0);
    clock.advance(Duration::from_millis(200));
    assert_eq!(table.expire().await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_ttl_expired_by_the_table_turns_the_service_critical_on_every_server() {
    let clock = FakeClock::default();
    let table = InMemoryServiceTable::on(clock.clone());
    let (a, b) = pair(&table);
    a.register(spec("pay", ttl(3), 4)).await.unwrap();
    b.sync().await.unwrap();
    clock.advance(Duration::from_secs(4));
    a.round().await;
    b.round().await;
    for server in [&a, &b] {
        assert_eq!(found(server), 0);
        assert_eq!(server.get(&ServiceId::new("pay").unwrap()).unwrap().status.health, Health::Critical);
    }
}

#[tokio::test(start_paused = true)]
async fn each_live_server_takes_a_rounded_up_share_of_the_capacity() {
    let table = InMemoryServiceTable::default();
    let (a, _) = pair(&table);
    a.register(spec("pay", ttl(3), 10)).await.unwrap();
    table.set_live_nodes(3);
    a.sync().await.unwrap();
    let id = ServiceId::new("pay").unwrap();
    let permits: Vec<_> = (0..4).map(|_| a.registry().acquire(&id).unwrap()).collect();
    assert!(matches!(a.registry().acquire(&id), Err(crate::Error::AtCapacity { .. })), "ceil(10 / 3) = 4");
    assert_eq!(found(&a), 0, "a find skips a service at this server's share");
    drop(permits);
    table.set_live_nodes(1);
    a.sync().await.unwrap();
    let all: Vec<_> = (0..10).map(|_| a.registry().acquire(&id).unwrap()).collect();
    assert_eq!(all.len(), 10);
}

#[tokio::test(start_paused = true)]
async fn a_verdict_the_table_could_not_take_is_written_again_and_an_unavailable_table_is_an_error() {
    let table = InMemoryServiceTable::default();
    let (a, b) = pair(&table);
    a.register(spec("pay", ttl(3), 4)).await.unwrap();
    b.sync().await.unwrap();
    let id = ServiceId::new("pay").unwrap();
    table.set_down(true);
    let refused = a.register(spec("ship", ttl(3), 4)).await.unwrap_err();
    assert!(matches!(refused, baton_core::Error::Unavailable(_)), "{refused:?}");
    assert!(a.get(&ServiceId::new("ship").unwrap()).is_err(), "not taken here when the table refused it");
    a.registry().adopt_health(&id, Health::Critical, "HTTP 503").unwrap();
    let verdict = baton_core::RegistryEvent::HealthChanged {
        id: id.clone(),
        from: Health::Passing,
        to: Health::Critical,
        output: "HTTP 503".to_owned(),
    };
    crate::Scope::report(&a, verdict).await;
    a.round().await;
    table.set_down(false);
    b.sync().await.unwrap();
    assert_eq!(b.get(&id).unwrap().status.health, Health::Passing, "the table did not take it yet");
    a.round().await;
    b.sync().await.unwrap();
    assert_eq!(b.get(&id).unwrap().status.health, Health::Critical);
}
