use std::sync::Arc;
use std::time::Duration;

use baton_core::fakes::{FakeClock, RecordingSink, ScriptedProbe};
use baton_core::{DeregisterReason, Health, ProbeResult, RegistryEvent, ServiceId, ServiceRequirements, ServiceSpec};

use super::*;
use crate::Config;

fn id(s: &str) -> ServiceId {
    ServiceId::new(s).unwrap()
}

/// A service with capability `x` and the given flat health check document.
fn spec(id: &str, health_check: serde_json::Value) -> ServiceSpec {
    ServiceSpec::from_json(
        &serde_json::json!({
            "id": id,
            "endpoint": {"protocol": "http", "url": "http://127.0.0.1:1/"},
            "capabilities": ["x"],
            "health_check": health_check,
        })
        .to_string(),
    )
    .unwrap()
}

/// An HTTP-checked service probed every 10s with a 2s timeout.
fn probed(id: &str, healthy: u32, unhealthy: u32) -> ServiceSpec {
    spec(
        id,
        serde_json::json!({"kind": "http", "url": "http://127.0.0.1:1/health", "interval": "10s", "timeout": "2s",
            "healthy_threshold": healthy, "unhealthy_threshold": unhealthy}),
    )
}

struct Harness {
    registry: Registry,
    clock: FakeClock,
    events: RecordingSink<RegistryEvent>,
    probe: ScriptedProbe,
    supervisor: Arc<Supervisor<ScriptedProbe>>,
}

impl Harness {
    fn new() -> Self {
        let clock = FakeClock::default();
        let events = RecordingSink::default();
        let registry = Config::default().build_with(Arc::new(clock.clone()), Arc::new(events.clone()));
        let probe = ScriptedProbe::default();
        let supervisor = Arc::new(SupervisorConfig::default().build(registry.clone(), Arc::new(probe.clone())));
        Self { registry, clock, events, probe, supervisor }
    }

    /// Registers `spec` and forgets the `Registered` event.
    fn register(&self, spec: ServiceSpec) {
        self.registry.register(spec).unwrap();
        self.events.take();
    }

    fn health(&self, service: &str) -> Health {
        self.registry.get(&id(service)).unwrap().status.health
    }

    /// Ticks, then moves the clock a full probe interval on.
    async fn round(&self) {
        self.supervisor.tick().await;
        self.clock.advance(Duration::from_secs(10));
    }

    /// Starts a tick in the background and returns once `service` has been probed `calls` times.
    async fn tick_in_background(&self, service: &str, calls: usize) -> tokio::task::JoinHandle<()> {
        let supervisor = Arc::clone(&self.supervisor);
        let tick = tokio::spawn(async move { supervisor.tick().await });
        while self.probe.calls().iter().filter(|c| c.as_str() == service).count() < calls {
            tokio::task::yield_now().await;
        }
        tick
    }
}

fn changed(service: &str, from: Health, to: Health, output: &str) -> RegistryEvent {
    RegistryEvent::HealthChanged { id: id(service), from, to, output: output.to_owned() }
}

/// Feeds `script` to one probed service, one round each, and checks its health after every
/// round and the events published along the way.
async fn check(thresholds: (u32, u32), script: &[ProbeResult], healths: &[Health], expected: &[RegistryEvent]) {
    let h = Harness::new();
    h.register(probed("svc", thresholds.0, thresholds.1));
    assert_eq!(h.health("svc"), Health::Unknown);
    h.probe.script(&id("svc"), script.iter().cloned());
    let mut seen = Vec::new();
    for _ in script {
        h.round().await;
        seen.push(h.health("svc"));
    }
    assert_eq!(seen, healths, "script {script:?}");
    assert_eq!(h.events.take(), expected, "script {script:?}");
    assert_eq!(h.probe.calls().len(), script.len());
}

fn pass() -> ProbeResult {
    Ok("HTTP 200".to_owned())
}

fn fail() -> ProbeResult {
    Err("HTTP 503".to_owned())
}

#[tokio::test]
async fn unknown_resolves_on_the_first_probe_either_way() {
    use Health::*;
    check((2, 3), &[pass()], &[Passing], &[changed("svc", Unknown, Passing, "HTTP 200")]).await;
    // The unhealthy threshold damps a passing service, not an unknown one.
    check((2, 3), &[fail()], &[Critical], &[changed("svc", Unknown, Critical, "HTTP 503")]).await;
}

#[tokio::test]
async fn thresholds_damp_changes_in_both_directions() {
    use Health::*;
    check(
        (2, 3),
        &[pass(), fail(), fail(), fail(), pass(), pass()],
        &[Passing, Passing, Passing, Critical, Critical, Passing],
        &[
            changed("svc", Unknown, Passing, "HTTP 200"),
            changed("svc", Passing, Critical, "HTTP 503"),
            changed("svc", Critical, Passing, "HTTP 200"),
        ],
    )
    .await;
    check(
        (1, 1),
        &[pass(), fail(), pass()],
        &[Passing, Critical, Passing],
        &[
            changed("svc", Unknown, Passing, "HTTP 200"),
            changed("svc", Passing, Critical, "HTTP 503"),
            changed("svc", Critical, Passing, "HTTP 200"),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_flapping_service_never_changes_state() {
    use Health::*;
    check(
        (2, 3),
        &[pass(), fail(), pass(), fail(), pass(), fail(), pass()],
        &[Passing; 7],
        &[changed("svc", Unknown, Passing, "HTTP 200")],
    )
    .await;
    check(
        (2, 3),
        &[fail(), pass(), fail(), pass(), fail()],
        &[Critical; 5],
        &[changed("svc", Unknown, Critical, "HTTP 503")],
    )
    .await;
}

#[tokio::test]
async fn probes_run_only_when_due() {
    let h = Harness::new();
    h.register(probed("probed", 1, 1));
    h.register(spec("ttl", serde_json::json!({"kind": "ttl", "ttl": "30s"})));
    h.register(spec("unchecked", serde_json::json!({"kind": "none"})));
    let calls = || h.probe.calls().len();
    h.supervisor.tick().await;
    assert_eq!(calls(), 1);
    h.supervisor.tick().await;
    assert_eq!(calls(), 1, "not due again at the same instant");
    h.clock.advance(Duration::from_secs(9));
    h.supervisor.tick().await;
    assert_eq!(calls(), 1, "not due 9s into a 10s interval");
    h.clock.advance(Duration::from_secs(1));
    h.supervisor.tick().await;
    assert_eq!(calls(), 2, "due once the interval has passed");
    h.clock.advance(Duration::from_secs(25));
    h.supervisor.tick().await;
    assert_eq!(calls(), 3, "a late round probes once, not once per missed interval");
    assert_eq!(h.probe.calls(), [id("probed"), id("probed"), id("probed")]);
}

#[tokio::test]
async fn an_expired_ttl_turns_critical_once_and_heartbeats_bring_it_back() {
    let h = Harness::new();
    h.register(spec("beats", serde_json::json!({"kind": "ttl", "ttl": "30s", "healthy_threshold": 2})));
    let rate = || h.registry.get(&id("beats")).unwrap().status.success_rate;

    h.clock.advance(Duration::from_secs(30));
    h.supervisor.tick().await;
    assert_eq!(h.health("beats"), Health::Passing, "exactly the ttl is not yet expired");
    h.clock.advance(Duration::from_secs(1));
    h.supervisor.tick().await;
    assert_eq!(
        h.events.take(),
        [changed("beats", Health::Passing, Health::Critical, "ttl 30s expired (registered 31s ago)")]
    );
    assert!((rate() - 0.8).abs() < 1e-6, "one expiry counts once: {}", rate());

    for _ in 0..5 {
        h.clock.advance(Duration::from_secs(10));
        h.supervisor.tick().await;
    }
    assert_eq!(h.events.take(), []);
    assert!((rate() - 0.8).abs() < 1e-6, "still one expiry after more rounds: {}", rate());

    h.registry.heartbeat(&id("beats")).unwrap();
    h.supervisor.tick().await;
    assert_eq!(h.health("beats"), Health::Critical, "one heartbeat is below the healthy threshold");
    h.clock.advance(Duration::from_secs(5));
    h.registry.heartbeat(&id("beats")).unwrap();
    h.supervisor.tick().await;
    assert_eq!(h.events.take(), [changed("beats", Health::Critical, Health::Passing, "heartbeat")]);

    h.clock.advance(Duration::from_secs(31));
    h.supervisor.tick().await;
    h.supervisor.tick().await;
    assert_eq!(
        h.events.take(),
        [changed("beats", Health::Passing, Health::Critical, "ttl 30s expired (last heartbeat 31s ago)")]
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_probe_times_out_as_a_failure_and_finds_do_not_wait_for_it() {
    let h = Harness::new();
    h.register(probed("slow", 1, 1));
    h.round().await;
    assert_eq!(h.events.take(), [changed("slow", Health::Unknown, Health::Passing, "ok")]);

    h.probe.hang(&id("slow"), true);
    let started = tokio::time::Instant::now();
    let tick = h.tick_in_background("slow", 2).await;
    let found = h.registry.find(&ServiceRequirements::capability("x"), 16).unwrap();
    assert_eq!(found.total, 1, "the hanging service is still a candidate while its probe runs");
    assert_eq!(started.elapsed(), Duration::ZERO, "find returned without waiting");

    tick.await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(2), "the probe was cut off at its timeout");
    assert_eq!(h.events.take(), [changed("slow", Health::Passing, Health::Critical, "probe timed out after 2s")]);
    assert_eq!(h.registry.get(&id("slow")).unwrap().status.last_check_output, "probe timed out after 2s");
}

#[tokio::test]
async fn a_service_critical_too_long_is_deregistered() {
    let h = Harness::new();
    let mut check = probed("dying", 1, 1).into_definition();
    check.health_check.deregister_after = Some(Duration::from_secs(30));
    h.register(ServiceSpec::new(check).unwrap());
    h.register(spec("fine", serde_json::json!({"kind": "none"})));
    h.probe.script(&id("dying"), [fail()]);

    for _ in 0..3 {
        h.round().await; // critical at 0s, still there at 10s and 20s
    }
    assert_eq!(h.registry.len(), 2);
    h.supervisor.tick().await; // critical for 30s
    assert_eq!(h.registry.len(), 1);
    assert!(h.registry.get(&id("dying")).is_err());
    assert_eq!(h.health("fine"), Health::Passing);
    assert_eq!(
        h.events.take(),
        [
            changed("dying", Health::Unknown, Health::Critical, "HTTP 503"),
            RegistryEvent::Deregistered { id: id("dying"), reason: DeregisterReason::CriticalTooLong },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_service_deregistered_during_its_probe_is_not_resurrected() {
    let h = Harness::new();
    h.register(probed("gone", 1, 1));
    h.probe.hang(&id("gone"), true);
    let tick = h.tick_in_background("gone", 1).await;
    h.registry.deregister(&id("gone")).unwrap();
    tick.await.unwrap();
    assert!(h.registry.get(&id("gone")).is_err());
    assert!(h.registry.is_empty());
    assert_eq!(
        h.events.take(),
        [RegistryEvent::Deregistered { id: id("gone"), reason: DeregisterReason::Requested }],
        "the timed-out probe recorded nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_of_a_replaced_spec_does_not_touch_the_new_registration() {
    for deregister_first in [false, true] {
        let h = Harness::new();
        h.register(probed("again", 1, 1));
        h.probe.hang(&id("again"), true);
        let tick = h.tick_in_background("again", 1).await;
        if deregister_first {
            h.registry.deregister(&id("again")).unwrap();
        }
        // An update keeps the live state, so only the spec tells the old probe apart.
        h.registry.register(probed("again", 1, 1)).unwrap();
        tick.await.unwrap();
        assert_eq!(h.health("again"), Health::Unknown, "the old probe's timeout was not recorded");
        assert_eq!(h.registry.get(&id("again")).unwrap().status.last_check_output, "");
        let expected = if deregister_first {
            vec![
                RegistryEvent::Deregistered { id: id("again"), reason: DeregisterReason::Requested },
                RegistryEvent::Registered { id: id("again") },
            ]
        } else {
            vec![RegistryEvent::Updated { id: id("again") }]
        };
        assert_eq!(h.events.take(), expected);
    }
}

#[tokio::test(start_paused = true)]
async fn a_spawned_supervisor_ticks_until_its_handle_goes() {
    let h = Harness::new();
    h.register(probed("svc", 1, 1));
    let supervisor = SupervisorConfig::default().build(h.registry.clone(), Arc::new(h.probe.clone()));
    let handle = supervisor.spawn();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(h.probe.calls().len(), 1, "the first round runs at once");
    assert_eq!(h.health("svc"), Health::Passing);
    h.clock.advance(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.probe.calls().len(), 2, "the next round a tick later");
    handle.shutdown().await;
    h.clock.advance(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.probe.calls().len(), 2, "no rounds after shutdown");
}

/// A scope that checks the services named `mine-*` and records what it is told.
#[derive(Debug, Default)]
struct MineOnly {
    reported: parking_lot::Mutex<Vec<RegistryEvent>>,
}

impl Scope for MineOnly {
    fn checks(&self, id: &ServiceId) -> bool {
        id.as_str().starts_with("mine-")
    }

    fn report(&self, event: RegistryEvent) -> BoxFuture<'_, ()> {
        self.reported.lock().push(event);
        Box::pin(std::future::ready(()))
    }
}

#[tokio::test]
async fn a_scoped_supervisor_checks_its_share_reports_its_verdicts_and_leaves_ttls_to_the_table() {
    let clock = FakeClock::default();
    let events = RecordingSink::default();
    let registry = Config::default().build_with(Arc::new(clock.clone()), Arc::new(events.clone()));
    let probe = ScriptedProbe::default();
    let scope = Arc::new(MineOnly::default());
    let config = SupervisorConfig { scope: Some(Arc::clone(&scope) as Arc<dyn Scope>), ..SupervisorConfig::default() };
    let supervisor = config.build(registry.clone(), Arc::new(probe.clone()));
    registry.register(probed("mine-a", 1, 1)).unwrap();
    registry.register(probed("theirs-b", 1, 1)).unwrap();
    registry
        .register(spec("mine-ttl", serde_json::json!({"kind": "ttl", "ttl": "1s", "deregister_after": "5s"})))
        .unwrap();
    probe.script(&id("mine-a"), [fail()]);
    supervisor.tick().await;
    assert_eq!(probe.calls(), [id("mine-a")], "only the services in scope are probed");
    assert_eq!(*scope.reported.lock(), [changed("mine-a", Health::Unknown, Health::Critical, "HTTP 503")]);
    // The TTL ran out long ago by this clock, but the shared table judges TTLs, not this server.
    clock.advance(Duration::from_secs(60));
    supervisor.tick().await;
    assert_eq!(registry.get(&id("mine-ttl")).unwrap().status.health, Health::Passing);
    // A service critical too long is deregistered, and the removal reported.
    registry.adopt_health(&id("mine-ttl"), Health::Critical, "ttl expired").unwrap();
    clock.advance(Duration::from_secs(6));
    scope.reported.lock().clear();
    probe.script(&id("mine-a"), [pass()]);
    supervisor.tick().await;
    let reported = scope.reported.lock().clone();
    assert!(
        reported
            .contains(&RegistryEvent::Deregistered { id: id("mine-ttl"), reason: DeregisterReason::CriticalTooLong }),
        "{reported:?}"
    );
    assert!(registry.get(&id("theirs-b")).is_ok());
}
