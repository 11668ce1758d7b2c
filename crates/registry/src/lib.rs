//! Baton's service registry: register services, find the healthy candidates for a requirement
//! in microseconds, account for their capacity, and keep their health honest.
//!
//! What it is for: the in-memory source of truth about which services exist, what they can
//! do and whether they can take traffic now. [`Registry`] is a cheap-to-clone handle; many
//! threads register, heartbeat and find at once.
//!
//! What it is not for: persistence or calling services (the executor does that, taking
//! [`Permit`]s from here). In a cluster the registry is a replica: [`Shared`] writes through
//! a [`baton_core::ServiceTable`] (the table every node shares) and applies its changes here;
//! the [`Supervisor`] then checks only the services the table gives this node ([`Scope`]).
//!
//! How a find works: a multi-index keeps one posting list (a roaring bitmap of dense slots)
//! per capability, data format, protocol, auth scheme, encryption level, compliance tag and
//! label, and cumulative threshold bitmaps for latency, throughput, cost and availability. A
//! query intersects the lists its conditions name, smallest first, then checks each survivor
//! exactly (spec, passing health, capacity left) and ranks them by the documented
//! [`baton_core::directory::match_score`].
//!
//! ```
//! use baton_core::{ServiceRequirements, ServiceSpec};
//! use baton_registry::Registry;
//!
//! let registry = Registry::default();
//! for (id, p99) in [("pay-eu", 40.0), ("pay-us", 25.0)] {
//!     let spec = ServiceSpec::from_json(&format!(r#"{{
//!         "id": "{id}",
//!         "endpoint": {{"protocol": "http", "url": "http://127.0.0.1:8080/charge"}},
//!         "capabilities": ["payment.charge"],
//!         "qos": {{"latency_p50_ms": 10, "latency_p99_ms": {p99}}}
//!     }}"#))?;
//!     registry.register(spec)?;
//! }
//! let wanted = ServiceRequirements {
//!     max_latency_p99_ms: Some(50.0),
//!     ..ServiceRequirements::capability("payment.charge")
//! };
//! let found = registry.find(&wanted, 16)?;
//! assert_eq!(found.total, 2);
//! assert_eq!(found.candidates[0].service.spec.id().as_str(), "pay-us"); // faster ranks first
//!
//! let permit = registry.acquire(found.candidates[0].service.spec.id())?;
//! drop(permit); // capacity comes back
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod health;
mod index;
mod probe;
mod registry;
mod shared;

pub use error::{Error, Result};
pub use health::{Scope, Supervisor, SupervisorConfig, SupervisorHandle};
pub use probe::NetworkProbe;
pub use registry::{Config, Permit, Registry};
pub use shared::{Shared, SharedHandle, UNCHECKED_BEAT_EVERY};

// The README's Rust example is a doc test of this crate, so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeExample;
