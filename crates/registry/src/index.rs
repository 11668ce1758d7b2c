//! The multi-index: posting lists of dense slots (roaring bitmaps), one per indexed term, and
//! cumulative threshold bitmaps that answer QoS bounds without scanning.
//!
//! A query collects one bitmap per condition, intersects them smallest first, and hands the
//! survivors to exact per-candidate checks. Bitmaps may over-approximate (a QoS bound is
//! rounded to the next threshold), never under-approximate.

use std::collections::HashMap;

use baton_core::{AuthScheme, Encryption, Protocol, ServiceRequirements, ServiceSpec};
use roaring::RoaringBitmap;

/// Log-spaced thresholds for one QoS dimension, with one bitmap per threshold holding every
/// slot whose value is within it (`<=` for upper bounds, `>=` for lower bounds).
#[derive(Debug)]
struct Thresholds {
    bounds: &'static [f64],
    upper: bool,
    within: Vec<RoaringBitmap>,
}

/// Latency in ms and cost: queried as upper bounds.
const LATENCY_BOUNDS: &[f64] = &[
    1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0, 750.0, 1000.0,
    1500.0, 2000.0, 3000.0, 5000.0, 10_000.0, 20_000.0, 60_000.0,
];
const COST_BOUNDS: &[f64] =
    &[0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0];
/// Throughput in requests per second: queried as a lower bound.
const THROUGHPUT_BOUNDS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10_000.0, 20_000.0, 50_000.0,
    100_000.0,
];
/// Availability: queried as a lower bound.
const AVAILABILITY_BOUNDS: &[f64] = &[0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 1.0];

impl Thresholds {
    fn new(bounds: &'static [f64], upper: bool) -> Self {
        Self { bounds, upper, within: vec![RoaringBitmap::new(); bounds.len()] }
    }

    fn holds(&self, i: usize, value: f64) -> bool {
        if self.upper { value <= self.bounds[i] } else { value >= self.bounds[i] }
    }

    fn set(&mut self, slot: u32, value: f64, present: bool) {
        for i in 0..self.bounds.len() {
            if self.holds(i, value) {
                if present {
                    self.within[i].insert(slot);
                } else {
                    self.within[i].remove(slot);
                }
            }
        }
    }

    /// The tightest bitmap containing every slot that meets `bound`; `None` when every slot may.
    fn superset(&self, bound: f64) -> Option<&RoaringBitmap> {
        if self.upper {
            // Smallest threshold >= bound: everything within the bound is within it.
            self.bounds.iter().position(|&b| b >= bound).map(|i| &self.within[i])
        } else {
            // Largest threshold <= bound.
            self.bounds.iter().rposition(|&b| b <= bound).map(|i| &self.within[i])
        }
    }
}

/// The posting lists of every registered service, by slot.
#[derive(Debug)]
pub(crate) struct Index {
    capabilities: HashMap<Box<str>, RoaringBitmap>,
    formats: HashMap<Box<str>, RoaringBitmap>,
    compliance: HashMap<Box<str>, RoaringBitmap>,
    labels: HashMap<(Box<str>, Box<str>), RoaringBitmap>,
    protocols: [RoaringBitmap; Protocol::ALL.len()],
    auth: [RoaringBitmap; AuthScheme::ALL.len()],
    /// `encryption[e]` holds services offering at least level `e`.
    encryption: [RoaringBitmap; Encryption::ALL.len()],
    latency_p99: Thresholds,
    throughput: Thresholds,
    cost: Thresholds,
    availability: Thresholds,
    all: RoaringBitmap,
}

impl Default for Index {
    fn default() -> Self {
        Self {
            capabilities: HashMap::new(),
            formats: HashMap::new(),
            compliance: HashMap::new(),
            labels: HashMap::new(),
            protocols: Default::default(),
            auth: Default::default(),
            encryption: Default::default(),
            latency_p99: Thresholds::new(LATENCY_BOUNDS, true),
            throughput: Thresholds::new(THROUGHPUT_BOUNDS, false),
            cost: Thresholds::new(COST_BOUNDS, true),
            availability: Thresholds::new(AVAILABILITY_BOUNDS, false),
            all: RoaringBitmap::new(),
        }
    }
}

/// What a query needs before exact checks: the bitmaps to intersect, or a proof of no match.
pub(crate) enum Postings<'a> {
    /// Some condition names a term nobody has.
    Empty,
    /// Intersect these (all services when the list is empty).
    Intersect(Vec<std::borrow::Cow<'a, RoaringBitmap>>),
}

fn set_term(map: &mut HashMap<Box<str>, RoaringBitmap>, term: &str, slot: u32, present: bool) {
    if present {
        map.entry(term.into()).or_default().insert(slot);
    } else if let Some(bitmap) = map.get_mut(term) {
        bitmap.remove(slot);
        // Drop empty lists so churn of one-off terms does not grow the index.
        if bitmap.is_empty() {
            map.remove(term);
        }
    }
}

fn protocol_index(p: Protocol) -> usize {
    Protocol::ALL.iter().position(|&q| q == p).expect("every protocol is listed")
}

fn auth_index(a: AuthScheme) -> usize {
    AuthScheme::ALL.iter().position(|&b| b == a).expect("every scheme is listed")
}

fn encryption_index(e: Encryption) -> usize {
    Encryption::ALL.iter().position(|&f| f == e).expect("every level is listed")
}

impl Index {
    /// Adds (`present`) or removes every posting of `spec` at `slot`.
    pub(crate) fn set(&mut self, slot: u32, spec: &ServiceSpec, present: bool) {
        for c in spec.capabilities() {
            set_term(&mut self.capabilities, c, slot, present);
        }
        for f in spec.formats() {
            set_term(&mut self.formats, f, slot, present);
        }
        for t in &spec.security().compliance {
            set_term(&mut self.compliance, t, slot, present);
        }
        for (k, v) in spec.labels() {
            let key = (Box::from(k.as_str()), Box::from(v.as_str()));
            if present {
                self.labels.entry(key).or_default().insert(slot);
            } else if let Some(bitmap) = self.labels.get_mut(&key) {
                bitmap.remove(slot);
                if bitmap.is_empty() {
                    self.labels.remove(&key);
                }
            }
        }
        let toggle = |bitmap: &mut RoaringBitmap| {
            if present {
                bitmap.insert(slot);
            } else {
                bitmap.remove(slot);
            }
        };
        toggle(&mut self.all);
        toggle(&mut self.protocols[protocol_index(spec.protocol())]);
        for &a in &spec.security().auth_schemes {
            toggle(&mut self.auth[auth_index(a)]);
        }
        for level in &mut self.encryption[..=encryption_index(spec.security().encryption)] {
            toggle(level);
        }
        let qos = spec.qos();
        self.latency_p99.set(slot, qos.latency_p99_ms, present);
        self.throughput.set(slot, qos.throughput_rps, present);
        self.cost.set(slot, qos.cost, present);
        self.availability.set(slot, qos.availability, present);
    }

    /// Every slot in use.
    pub(crate) fn all(&self) -> &RoaringBitmap {
        &self.all
    }

    /// The bitmaps whose intersection holds every match of `req` (and maybe a few more).
    pub(crate) fn postings(&self, req: &ServiceRequirements) -> Postings<'_> {
        use std::borrow::Cow;
        let mut lists: Vec<Cow<'_, RoaringBitmap>> = Vec::new();
        let terms = [
            (&self.capabilities, &req.capabilities),
            (&self.formats, &req.formats),
            (&self.compliance, &req.security.compliance),
        ];
        for (map, wanted) in terms {
            for term in wanted {
                match map.get(term.as_str()) {
                    Some(bitmap) => lists.push(Cow::Borrowed(bitmap)),
                    None => return Postings::Empty,
                }
            }
        }
        for (k, v) in &req.labels {
            match self.labels.get(&(Box::from(k.as_str()), Box::from(v.as_str()))) {
                Some(bitmap) => lists.push(Cow::Borrowed(bitmap)),
                None => return Postings::Empty,
            }
        }
        if let Some(union) = any_of(req.protocols.iter().map(|&p| &self.protocols[protocol_index(p)])) {
            lists.push(union);
        }
        if let Some(union) = any_of(req.security.auth_schemes.iter().map(|&a| &self.auth[auth_index(a)])) {
            lists.push(union);
        }
        if let Some(min) = req.security.min_encryption {
            lists.push(Cow::Borrowed(&self.encryption[encryption_index(min)]));
        }
        let bounds = [
            (&self.latency_p99, req.max_latency_p99_ms),
            (&self.throughput, req.min_throughput_rps),
            (&self.cost, req.max_cost),
            (&self.availability, req.min_availability),
        ];
        for (thresholds, bound) in bounds {
            if let Some(bitmap) = bound.and_then(|b| thresholds.superset(b)) {
                lists.push(Cow::Borrowed(bitmap));
            }
        }
        Postings::Intersect(lists)
    }
}

/// The union of `bitmaps`, borrowed when there is only one; `None` when there are none.
fn any_of<'a>(bitmaps: impl Iterator<Item = &'a RoaringBitmap>) -> Option<std::borrow::Cow<'a, RoaringBitmap>> {
    let mut bitmaps = bitmaps.peekable();
    let first = bitmaps.next()?;
    if bitmaps.peek().is_none() {
        return Some(std::borrow::Cow::Borrowed(first));
    }
    let mut union = first.clone();
    for b in bitmaps {
        union |= b;
    }
    Some(std::borrow::Cow::Owned(union))
}

/// Intersects `lists` smallest first; an empty `lists` means `all`.
pub(crate) fn intersect(mut lists: Vec<std::borrow::Cow<'_, RoaringBitmap>>, all: &RoaringBitmap) -> RoaringBitmap {
    lists.sort_unstable_by_key(|b| b.len());
    let mut lists = lists.into_iter();
    let Some(first) = lists.next() else { return all.clone() };
    let mut acc = first.into_owned();
    for b in lists {
        if acc.is_empty() {
            break;
        }
        acc &= &*b;
    }
    acc
}
