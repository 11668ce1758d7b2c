use std::sync::Arc;

use baton_core::fakes::{FakeClock, RecordingSink};
use baton_core::{Health, Registration, RegistryEvent, ServiceId, ServiceRequirements, ServiceSpec};

use super::*;

fn spec(id: &str, capabilities: &[&str], p99: f64, capacity: u32) -> ServiceSpec {
    ServiceSpec::from_json(
        &serde_json::json!({
            "id": id,
            "endpoint": {"protocol": "http", "url": "http://127.0.0.1:1/"},
            "capabilities": capabilities,
            "qos": {"latency_p50_ms": 1, "latency_p99_ms": p99},
            "capacity": capacity,
        })
        .to_string(),
    )
    .unwrap()
}

fn id(s: &str) -> ServiceId {
    ServiceId::new(s).unwrap()
}

fn found(registry: &Registry, capability: &str) -> Vec<String> {
    let matches = registry.find(&ServiceRequirements::capability(capability), 16).unwrap();
    matches.candidates.iter().map(|c| c.service.spec.id().to_string()).collect()
}

fn recording() -> (Registry, RecordingSink<RegistryEvent>) {
    let events = RecordingSink::default();
    let registry = Config::default().build_with(Arc::new(FakeClock::default()), Arc::new(events.clone()));
    (registry, events)
}

#[test]
fn ranking_prefers_qos_fit_then_headroom_then_id() {
    let registry = Registry::default();
    registry.register(spec("slow", &["x"], 400.0, 4)).unwrap();
    registry.register(spec("fast", &["x"], 10.0, 4)).unwrap();
    registry.register(spec("fast-twin", &["x"], 10.0, 4)).unwrap();
    registry.register(spec("other", &["y"], 1.0, 4)).unwrap();
    assert_eq!(found(&registry, "x"), ["fast", "fast-twin", "slow"]);
    // Load on one twin moves the other ahead.
    let _permit = registry.acquire(&id("fast")).unwrap();
    assert_eq!(found(&registry, "x"), ["fast-twin", "fast", "slow"]);
    let limited = registry.find(&ServiceRequirements::capability("x"), 1).unwrap();
    assert_eq!((limited.candidates.len(), limited.total), (1, 3));
    assert_eq!(limited.candidates[0].service.spec.id().as_str(), "fast-twin");
}

#[test]
fn a_service_at_capacity_is_not_a_candidate_until_a_permit_returns() {
    let registry = Registry::default();
    registry.register(spec("one", &["x"], 10.0, 2)).unwrap();
    let a = registry.acquire(&id("one")).unwrap();
    let b = registry.acquire(&id("one")).unwrap();
    assert_eq!(registry.acquire(&id("one")).unwrap_err(), Error::AtCapacity { id: id("one"), capacity: 2 });
    assert!(found(&registry, "x").is_empty());
    assert_eq!(registry.get(&id("one")).unwrap().status.in_flight, 2);
    drop(a);
    assert_eq!(found(&registry, "x"), ["one"]);
    drop(b);
    assert_eq!(registry.get(&id("one")).unwrap().status.in_flight, 0);
}

#[test]
fn permits_taken_before_an_update_still_count_after_it() {
    let registry = Registry::default();
    registry.register(spec("one", &["x"], 10.0, 1)).unwrap();
    let permit = registry.acquire(&id("one")).unwrap();
    registry.register(spec("one", &["x"], 20.0, 1)).unwrap();
    assert!(registry.acquire(&id("one")).is_err());
    drop(permit);
    assert!(registry.acquire(&id("one")).is_ok());
}

#[test]
fn updates_and_deletes_leave_no_stale_postings() {
    let (registry, events) = recording();
    assert_eq!(registry.register(spec("svc", &["x", "y"], 10.0, 4)).unwrap(), Registration::Created);
    assert_eq!(registry.register(spec("svc", &["y", "z"], 10.0, 4)).unwrap(), Registration::Updated);
    assert!(found(&registry, "x").is_empty());
    assert_eq!(found(&registry, "y"), ["svc"]);
    assert_eq!(found(&registry, "z"), ["svc"]);
    let tight = ServiceRequirements { max_latency_p99_ms: Some(15.0), ..ServiceRequirements::capability("z") };
    registry.register(spec("svc", &["z"], 500.0, 4)).unwrap();
    assert_eq!(registry.find(&tight, 16).unwrap().total, 0);
    registry.deregister(&id("svc")).unwrap();
    assert!(found(&registry, "z").is_empty());
    // The freed slot is reused by a different service without inheriting anything.
    registry.register(spec("new", &["w"], 10.0, 4)).unwrap();
    assert!(found(&registry, "y").is_empty() && found(&registry, "z").is_empty());
    assert_eq!(found(&registry, "w"), ["new"]);
    assert_eq!(registry.len(), 1);
    assert_eq!(
        events.events(),
        [
            RegistryEvent::Registered { id: id("svc") },
            RegistryEvent::Updated { id: id("svc") },
            RegistryEvent::Updated { id: id("svc") },
            RegistryEvent::Deregistered { id: id("svc"), reason: DeregisterReason::Requested },
            RegistryEvent::Registered { id: id("new") },
        ]
    );
}

#[test]
fn refused_calls_change_nothing() {
    let registry = Config { max_services: 1, ..Config::default() }.build();
    registry.register(spec("a", &["x"], 10.0, 4)).unwrap();
    assert_eq!(registry.register(spec("b", &["x"], 10.0, 4)).unwrap_err(), Error::Full { max: 1 });
    assert_eq!(registry.deregister(&id("ghost")).unwrap_err(), Error::UnknownService(id("ghost")));
    assert_eq!(registry.heartbeat(&id("ghost")).unwrap_err(), Error::UnknownService(id("ghost")));
    assert_eq!(registry.acquire(&id("ghost")).unwrap_err(), Error::UnknownService(id("ghost")));
    let empty = registry.find(&ServiceRequirements::default(), 16).unwrap_err();
    assert!(empty.to_string().contains("state at least one condition"), "{empty}");
    let contradictory = ServiceRequirements { min_availability: Some(1.5), ..ServiceRequirements::capability("x") };
    assert!(registry.find(&contradictory, 16).unwrap_err().to_string().contains("min_availability"));
    assert_eq!(registry.len(), 1);
    assert_eq!(found(&registry, "x"), ["a"]);
}

#[test]
fn listing_pages_by_id_and_survives_concurrent_inserts() {
    let registry = Registry::default();
    for name in ["d", "b", "a", "c", "e"] {
        registry.register(spec(name, &["x"], 10.0, 4)).unwrap();
    }
    let first = registry.list(None, 2);
    let ids = |p: &Page| p.services.iter().map(|v| v.spec.id().to_string()).collect::<Vec<_>>();
    assert_eq!(ids(&first), ["a", "b"]);
    registry.register(spec("aa", &["x"], 10.0, 4)).unwrap(); // before the cursor: not seen again
    let second = registry.list(first.next_after.as_ref(), 2);
    assert_eq!(ids(&second), ["c", "d"]);
    let last = registry.list(second.next_after.as_ref(), 2);
    assert_eq!((ids(&last), last.next_after), (vec!["e".to_owned()], None));
    assert!(registry.list(None, 0).services.is_empty());
}

#[test]
fn heartbeats_pass_checks_and_record_the_time() {
    let (registry, events) = recording();
    registry.register(spec("a", &["x"], 10.0, 4)).unwrap();
    let status = registry.heartbeat(&id("a")).unwrap();
    assert_eq!(status.health, Health::Passing);
    assert!(status.last_heartbeat.is_some());
    assert_eq!(status.last_check_output, "heartbeat");
    assert_eq!(events.events().len(), 1, "a passing heartbeat on a passing service changes nothing");
}

#[test]
fn concurrent_updates_are_atomic_to_readers() {
    let registry = Registry::default();
    registry.register(spec("flip", &["x"], 10.0, 4)).unwrap();
    let writer = {
        let registry = registry.clone();
        std::thread::spawn(move || {
            for i in 0..2_000 {
                let (cap, p99) = if i % 2 == 0 { ("y", 500.0) } else { ("x", 10.0) };
                registry.register(spec("flip", &[cap], p99, 4)).unwrap();
            }
        })
    };
    let fast_x = ServiceRequirements { max_latency_p99_ms: Some(20.0), ..ServiceRequirements::capability("x") };
    while !writer.is_finished() {
        for candidate in registry.find(&fast_x, 16).unwrap().candidates {
            // Old spec or new spec, never the capability of one with the latency of the other.
            let spec = &candidate.service.spec;
            assert_eq!(spec.capabilities(), ["x"]);
            assert_eq!(spec.qos().latency_p99_ms, 10.0);
        }
    }
    writer.join().unwrap();
    assert_eq!(found(&registry, "x"), ["flip"]);
    assert!(found(&registry, "y").is_empty());
}

#[test]
fn the_catalog_generation_moves_on_every_change_planners_care_about() {
    let registry = Registry::default();
    let healthy = |r: &Registry| {
        let mut ids: Vec<String> = r.healthy_services().iter().map(|s| s.id().to_string()).collect();
        ids.sort();
        ids
    };
    let mut last = registry.generation();
    let mut moved = |r: &Registry, what: &str, expected: bool| {
        let now = r.generation();
        assert_eq!(now != last, expected, "generation after {what}: {last} -> {now}");
        last = now;
    };
    registry.register(spec("a", &["x"], 10.0, 4)).unwrap();
    moved(&registry, "a register", true);
    registry.register(spec("b", &["x"], 10.0, 1)).unwrap();
    moved(&registry, "a second register", true);
    registry.register(spec("b", &["x"], 20.0, 1)).unwrap();
    moved(&registry, "an update", true);
    // Load is not health: a service at capacity is still one a plan may use.
    let _permit = registry.acquire(&id("b")).unwrap();
    moved(&registry, "a permit", false);
    assert_eq!(healthy(&registry), ["a", "b"]);

    let a = registry.entry(&id("a")).unwrap();
    let now = registry.clock().now();
    registry.record(&a, Verdict::Expired, "ttl expired", now);
    moved(&registry, "turning critical", true);
    assert_eq!(healthy(&registry), ["b"]);
    registry.record(&a, Verdict::Fail, "still down", now);
    moved(&registry, "a failure of a critical service", false);
    registry.record(&a, Verdict::Pass, "up", now);
    moved(&registry, "one pass of two needed", false);
    assert_eq!(healthy(&registry), ["b"]);
    registry.record(&a, Verdict::Pass, "up", now);
    moved(&registry, "turning passing again", true);
    registry.heartbeat(&id("a")).unwrap();
    moved(&registry, "a heartbeat of a passing service", false);
    assert_eq!(healthy(&registry), ["a", "b"]);

    registry.deregister(&id("a")).unwrap();
    moved(&registry, "a deregister", true);
    assert!(registry.deregister(&id("a")).is_err());
    moved(&registry, "a refused deregister", false);
    let b = registry.entry(&id("b")).unwrap();
    assert!(registry.remove_if_current(&b, DeregisterReason::CriticalTooLong));
    moved(&registry, "a removal by the supervisor", true);
    assert!(healthy(&registry).is_empty());
}
