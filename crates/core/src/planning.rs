//! Planning ports: where a planner reads the services it may compose ([`ServiceCatalog`]) and
//! how callers ask for a plan ([`Planning`]).

use std::sync::Arc;

use crate::error::Result;
use crate::goal::Goal;
use crate::plan::Plan;
use crate::service::ServiceSpec;

/// The services a planner may compose: the healthy ones, with a generation so that a planner
/// can keep what it built from them until they change.
pub trait ServiceCatalog: Send + Sync + 'static {
    /// A number that changes whenever the set of healthy services, or any of their specs, may
    /// have changed. Read it before [`healthy_services`](Self::healthy_services): what is built
    /// from the services then belongs to that generation or a newer one, never an older one.
    fn generation(&self) -> u64;

    /// The specs of the services that are healthy now, in no particular order.
    fn healthy_services(&self) -> Vec<Arc<ServiceSpec>>;
}

/// Composes plans for goals.
pub trait Planning: Send + Sync + 'static {
    /// A validated plan for `goal`. [`Error::Invalid`](crate::Error::Invalid) when the goal is
    /// malformed, [`Error::Precondition`](crate::Error::Precondition) when no plan of the
    /// services at hand meets it.
    fn plan(&self, goal: &Goal) -> Result<Plan>;
}
