//! Property: for random registries (with updates and deletes) and random requirements, `find`
//! returns exactly what a linear scan over every service returns, in the same order.

use std::collections::BTreeMap;

use baton_core::fakes::linear_find;
use baton_core::{ServiceDefinition, ServiceId, ServiceRequirements, ServiceSpec};
use baton_registry::Registry;
use proptest::prelude::*;

const CAPABILITIES: &[&str] = &["charge", "refund", "resize", "email", "ocr", "translate"];
const FORMATS: &[&str] = &["json", "protobuf", "xml", "png"];
const ENCRYPTIONS: [&str; 3] = ["none", "tls", "mtls"];
const COMPLIANCE: &[&str] = &["pci-dss", "hipaa", "gdpr"];
/// Values on and around the index's threshold boundaries, where an off-by-one would hide.
const LATENCIES: &[f64] = &[0.0, 1.0, 4.9, 5.0, 5.1, 50.0, 99.0, 100.0, 101.0, 750.0, 70_000.0];
const COSTS: &[f64] = &[0.0, 0.001, 0.0015, 0.1, 0.5, 2.0, 5000.0];
const THROUGHPUTS: &[f64] = &[0.0, 0.5, 1.0, 10.0, 99.0, 100.0, 200_000.0];
const AVAILABILITIES: &[f64] = &[0.0, 0.5, 0.9, 0.95, 0.99, 0.991, 0.999, 1.0];

fn subset(pool: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
    proptest::sample::subsequence(pool, 0..=pool.len().min(3)).prop_map(|v| v.into_iter().map(String::from).collect())
}

fn pick(pool: &'static [f64]) -> impl Strategy<Value = f64> {
    proptest::sample::select(pool)
}

fn protocol() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(&["http", "grpc", "worker"][..])
}

fn spec(id: usize) -> impl Strategy<Value = ServiceSpec> {
    (
        (subset(CAPABILITIES), subset(FORMATS), subset(COMPLIANCE), protocol()),
        (pick(LATENCIES), pick(LATENCIES), pick(COSTS), pick(THROUGHPUTS), pick(AVAILABILITIES)),
        (proptest::sample::subsequence(&["none", "api_key", "bearer", "mtls", "oauth2"][..], 0..3), 0..3usize),
        (1..4u32, proptest::option::of(proptest::sample::select(&["eu", "us"][..]))),
    )
        .prop_map(
            move |(
                (mut caps, formats, compliance, protocol),
                (l1, l2, cost, tput, avail),
                (auth, enc),
                (cap, region),
            )| {
                if caps.is_empty() {
                    caps.push("charge".to_owned());
                }
                let endpoint = match protocol {
                    "worker" => serde_json::json!({"protocol": "worker", "queue": "q"}),
                    p => serde_json::json!({"protocol": p, "url": "http://127.0.0.1:1/"}),
                };
                let labels: BTreeMap<String, String> =
                    region.map(|r| [("region".to_owned(), r.to_owned())].into()).unwrap_or_default();
                let doc = serde_json::json!({
                    "id": format!("s{id:02}"),
                    "endpoint": endpoint,
                    "capabilities": caps,
                    "formats": formats,
                    "qos": {"latency_p50_ms": l1.min(l2), "latency_p99_ms": l1.max(l2), "cost": cost,
                            "throughput_rps": tput, "availability": avail},
                    "security": {"auth_schemes": auth, "encryption": ENCRYPTIONS[enc], "compliance": compliance},
                    "capacity": cap,
                    "labels": labels,
                });
                ServiceSpec::new(serde_json::from_value::<ServiceDefinition>(doc).unwrap()).unwrap()
            },
        )
}

fn requirements() -> impl Strategy<Value = ServiceRequirements> {
    (
        (subset(CAPABILITIES), subset(FORMATS), subset(COMPLIANCE)),
        proptest::sample::subsequence(&["http", "grpc", "worker"][..], 0..3),
        (
            proptest::option::of(pick(LATENCIES)),
            proptest::option::of(pick(COSTS)),
            proptest::option::of(pick(THROUGHPUTS)),
            proptest::option::of(pick(AVAILABILITIES)),
        ),
        (proptest::sample::subsequence(&["api_key", "bearer", "mtls"][..], 0..2), proptest::option::of(0..3usize)),
        proptest::option::of(proptest::sample::select(&["eu", "us"][..])),
    )
        .prop_map(|((caps, formats, compliance), protocols, (lat, cost, tput, avail), (auth, enc), region)| {
            let doc = serde_json::json!({
                "capabilities": caps, "formats": formats, "protocols": protocols,
                "max_latency_p99_ms": lat, "max_cost": cost, "min_throughput_rps": tput, "min_availability": avail,
                "security": {"auth_schemes": auth, "compliance": compliance,
                             "min_encryption": enc.map(|e| ENCRYPTIONS[e])},
                "labels": region.map(|r| serde_json::json!({"region": r})).unwrap_or(serde_json::json!({})),
            });
            serde_json::from_value(doc).unwrap()
        })
        .prop_filter("at least one condition", |r: &ServiceRequirements| !r.is_empty())
}

#[derive(Debug, Clone)]
enum Op {
    Register(Box<ServiceSpec>),
    Deregister(usize),
    /// Hold a permit, so capacity and load take part in eligibility and score.
    Acquire(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = (0..24usize, 0..10u8).prop_flat_map(|(id, kind)| match kind {
        0 => Just(Op::Deregister(id)).boxed(),
        1 => Just(Op::Acquire(id)).boxed(),
        _ => spec(id).prop_map(|s| Op::Register(Box::new(s))).boxed(),
    });
    proptest::collection::vec(op, 1..80)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn find_agrees_with_a_linear_scan(ops in ops(), queries in proptest::collection::vec((requirements(), 0..6usize), 1..8)) {
        let registry = Registry::default();
        let mut permits = Vec::new();
        for op in ops {
            let id = |i: usize| ServiceId::new(&format!("s{i:02}")).unwrap();
            match op {
                Op::Register(spec) => drop(registry.register(*spec).unwrap()),
                Op::Deregister(i) => drop(registry.deregister(&id(i))),
                Op::Acquire(i) => permits.extend(registry.acquire(&id(i)).ok()),
            }
        }
        let everything = registry.list(None, usize::MAX).services;
        for (req, limit) in queries {
            let got = registry.find(&req, limit).unwrap();
            let want = linear_find(&everything, &req, limit);
            let ids = |m: &baton_core::Matches| m.candidates.iter().map(|c| (c.service.spec.id().clone(), c.score)).collect::<Vec<_>>();
            prop_assert_eq!(got.total, want.total, "total for {:?}", req);
            prop_assert_eq!(ids(&got), ids(&want), "ranking for {:?}", req);
        }
    }
}
