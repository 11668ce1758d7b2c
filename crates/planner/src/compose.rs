//! Composition: a forward search that finds when each concept can first be had, a backward
//! greedy selection of few services that still meets those times, and a pruning pass.
//!
//! The forward search is Dijkstra over services: a service starts when its last input becomes
//! available and finishes one step later, where a step weighs (latency, 1) compared
//! lexicographically. With no latency figures this is layered forward chaining and gives the
//! minimum number of layers; with latencies it gives the minimum response time (summed along a
//! sequence, maxed across parallel branches), then the fewest layers among equally fast plans.
//! A concept becomes available when a provided or produced concept is it or more specific:
//! marking walks up the taxonomy once per concept, so the whole search is
//! O((services + concepts) log services + outputs x depth).

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use crate::catalog::Catalog;
use crate::error::Missing;

/// A point on the plan's time axis: latency first, then layers.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Time {
    pub(crate) latency_ms: f64,
    pub(crate) layers: u32,
}

impl Time {
    const NEVER: Time = Time { latency_ms: f64::INFINITY, layers: u32::MAX };

    fn after(self, step_ms: f64) -> Time {
        Time { latency_ms: self.latency_ms + step_ms, layers: self.layers + 1 }
    }

    fn is_never(self) -> bool {
        self.layers == u32::MAX
    }
}

impl Eq for Time {}

impl PartialOrd for Time {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Time {
    fn cmp(&self, other: &Self) -> Ordering {
        self.latency_ms.total_cmp(&other.latency_ms).then(self.layers.cmp(&other.layers))
    }
}

/// What the forward search learned.
#[derive(Debug)]
pub(crate) struct Forward {
    /// When each concept can first be had (`NEVER` if not at all).
    pub(crate) available: Vec<Time>,
    /// When each service can first start and finish (`NEVER` if it cannot run).
    pub(crate) start: Vec<Time>,
    pub(crate) finish: Vec<Time>,
    /// The latest time at which a wanted concept becomes available.
    pub(crate) goal_time: Time,
}

/// The state of one forward search.
struct Search<'a> {
    catalog: &'a Catalog,
    usable: &'a [bool],
    step_ms: &'a dyn Fn(usize) -> f64,
    available: Vec<Time>,
    start: Vec<Time>,
    missing: Vec<u32>,
    heap: BinaryHeap<Reverse<(Time, u32)>>,
}

impl Search<'_> {
    /// Makes `concept` and its ancestors available at `at`; services whose last input this
    /// was become ready.
    fn mark(&mut self, concept: u32, at: Time) {
        for c in self.catalog.concepts.ancestors(concept) {
            // Ancestors of a marked concept are marked already, no later than it.
            if !self.available[c as usize].is_never() {
                break;
            }
            self.available[c as usize] = at;
            for &s in &self.catalog.consumers[c as usize] {
                self.missing[s as usize] -= 1;
                if self.missing[s as usize] == 0 {
                    self.ready(s, at);
                }
            }
        }
    }

    fn ready(&mut self, s: u32, at: Time) {
        if self.usable[s as usize] {
            self.start[s as usize] = at;
            self.heap.push(Reverse((at.after((self.step_ms)(s as usize)), s)));
        }
    }

    /// The time by which every wanted concept is available, if they all are.
    fn goal_time(&self, wanted: &[u32]) -> Option<Time> {
        wanted
            .iter()
            .map(|&w| self.available[w as usize])
            .try_fold(Time::default(), |latest, t| (!t.is_never()).then(|| latest.max(t)))
    }
}

/// Runs the forward search from `provided` over the services `usable` allows, stopping once
/// every wanted concept is available and nothing else can finish by then. `step_ms` weighs a
/// service (its latency under a latency objective, else 0).
pub(crate) fn forward(
    catalog: &Catalog,
    provided: &[u32],
    wanted: &[u32],
    usable: &[bool],
    step_ms: &dyn Fn(usize) -> f64,
) -> Forward {
    let n = catalog.services.len();
    let mut search = Search {
        catalog,
        usable,
        step_ms,
        available: vec![Time::NEVER; catalog.concepts.len()],
        start: vec![Time::NEVER; n],
        missing: catalog.services.iter().map(|s| s.inputs.len() as u32).collect(),
        heap: BinaryHeap::new(),
    };
    let mut finish = vec![Time::NEVER; n];
    for &p in provided {
        search.mark(p, Time::default());
    }
    // Services with no inputs are ready at once.
    for (s, service) in catalog.services.iter().enumerate() {
        if service.inputs.is_empty() {
            search.ready(s as u32, Time::default());
        }
    }
    let mut goal_time = search.goal_time(wanted);
    while let Some(Reverse((at, s))) = search.heap.pop() {
        if goal_time.is_some_and(|goal| at > goal) {
            break;
        }
        if !finish[s as usize].is_never() {
            continue;
        }
        finish[s as usize] = at;
        for &o in &catalog.services[s as usize].outputs {
            search.mark(o, at);
        }
        if goal_time.is_none() {
            goal_time = search.goal_time(wanted);
        }
    }
    Forward { available: search.available, start: search.start, finish, goal_time: goal_time.unwrap_or(Time::NEVER) }
}

/// One run of a service in a simulation: (service, start, finish).
pub(crate) type Run = (u32, Time, Time);

/// What pruning checks a smaller selection against.
pub(crate) struct Scope<'a> {
    pub(crate) catalog: &'a Catalog,
    pub(crate) provided: &'a [u32],
    pub(crate) wanted: &'a [u32],
    pub(crate) step_ms: &'a dyn Fn(usize) -> f64,
}

/// How the backward selection breaks ties between services that cover as much.
pub(crate) type Preference<'a> = &'a dyn Fn(usize) -> f64;

/// A candidate of the backward selection, with what it is ranked by.
struct Pick {
    gain: usize,
    new_needs: usize,
    preference: f64,
    finish: Time,
    service: u32,
}

impl Pick {
    /// More open needs resolved, then fewer new needs, then the objective's preference, then
    /// the earlier finish, then the id.
    fn beats(&self, other: &Pick, catalog: &Catalog) -> bool {
        let order = other
            .gain
            .cmp(&self.gain)
            .then(self.new_needs.cmp(&other.new_needs))
            .then(self.preference.total_cmp(&other.preference))
            .then(self.finish.cmp(&other.finish))
            .then_with(|| {
                catalog.services[self.service as usize]
                    .spec
                    .id()
                    .cmp(catalog.services[other.service as usize].spec.id())
            });
        order == Ordering::Less
    }
}

/// Picks few services that make every wanted concept available by the forward search's
/// times: repeatedly take the unresolved need with the latest deadline and choose, among the
/// services that produce it in time, the one that resolves the most open needs (ties: the
/// fewest new inputs to find, then the lowest `preference`, then the earliest finish, then id). Its inputs become needs due by
/// its start. Greedy set cover: minimum size is NP-hard.
pub(crate) fn select(catalog: &Catalog, fwd: &Forward, wanted: &[u32], prefer: Preference<'_>) -> Vec<u32> {
    let concepts = catalog.concepts.len();
    // The earliest finish of a selected service producing into each concept's subtree.
    let mut covered = vec![Time::NEVER; concepts];
    // Open needs: deadline per concept (NEVER = not needed).
    let mut deadline = vec![Time::NEVER; concepts];
    // Latest deadline first; among equal deadlines, the need with the most producers first.
    // Widely produced needs are where one service can cover several needs at once; on the
    // WSC'08 sets this order reaches the best known sizes on all eight, and it keeps the result
    // from hinging on how concepts happen to be numbered (fewest-first and id order do not).
    let mut open: BinaryHeap<(Time, usize, u32)> = BinaryHeap::new();
    let mut selected = Vec::new();
    let mut chosen = vec![false; catalog.services.len()];
    let mut stamp = vec![0u32; concepts];
    let mut round = 0u32;

    let need = |c: u32, by: Time, deadline: &mut Vec<Time>, open: &mut BinaryHeap<(Time, usize, u32)>| {
        // Provided concepts (available at time zero with no layer) need nothing.
        if fwd.available[c as usize] == Time::default() {
            return;
        }
        if by < deadline[c as usize] || deadline[c as usize].is_never() {
            deadline[c as usize] = by;
            open.push((by, catalog.producers[c as usize].len(), c));
        }
    };
    for &w in wanted {
        need(w, fwd.goal_time, &mut deadline, &mut open);
    }
    while let Some((by, _, c)) = open.pop() {
        if deadline[c as usize] != by || covered[c as usize] <= by {
            continue;
        }
        let mut best: Option<Pick> = None;
        for &s in &catalog.producers[c as usize] {
            let finish = fwd.finish[s as usize];
            if finish.is_never() || finish > by || chosen[s as usize] {
                continue;
            }
            round += 1;
            let mut gain = 0;
            for &o in &catalog.services[s as usize].outputs {
                for a in catalog.concepts.ancestors(o) {
                    if stamp[a as usize] == round {
                        break;
                    }
                    stamp[a as usize] = round;
                    let d = deadline[a as usize];
                    if !d.is_never() && finish <= d && covered[a as usize] > d {
                        gain += 1;
                    }
                }
            }
            // Inputs it would add as new needs: fewer means less to select later.
            let start = fwd.start[s as usize];
            let new_needs = catalog.services[s as usize]
                .inputs
                .iter()
                .filter(|&&i| {
                    fwd.available[i as usize] != Time::default()
                        && covered[i as usize] > start
                        && deadline[i as usize].is_never()
                })
                .count();
            let candidate = Pick { gain, new_needs, preference: prefer(s as usize), finish, service: s };
            if best.as_ref().is_none_or(|b| candidate.beats(b, catalog)) {
                best = Some(candidate);
            }
        }
        // The forward search made `c` available by `by`, so some producer finishes in time;
        // were that ever not so, validation reports the gap instead of a panic here.
        let Some(Pick { finish, service: s, .. }) = best else { continue };
        chosen[s as usize] = true;
        selected.push(s);
        for &o in &catalog.services[s as usize].outputs {
            for a in catalog.concepts.ancestors(o) {
                if covered[a as usize] <= finish {
                    break;
                }
                covered[a as usize] = finish;
            }
        }
        let start = fwd.start[s as usize];
        for &i in &catalog.services[s as usize].inputs {
            if covered[i as usize] > start {
                need(i, start, &mut deadline, &mut open);
            }
        }
    }
    selected
}

/// Simulates `selected` alone from `provided`: when each service starts and finishes, and
/// when each concept (with its ancestors) first becomes available. Services that cannot run
/// are left out of the runs.
pub(crate) fn simulate(
    catalog: &Catalog,
    provided: &[u32],
    selected: &[u32],
    step_ms: &dyn Fn(usize) -> f64,
) -> Simulation {
    let mut sim = Simulation { runs: Vec::with_capacity(selected.len()), available: HashMap::new() };
    for &p in provided {
        sim.mark(catalog, p, Time::default());
    }
    // Small sets: repeated passes are simpler than a heap and fast enough.
    let mut pending: Vec<u32> = selected.to_vec();
    loop {
        let mut next: Option<(Time, Time, usize)> = None;
        for (k, &s) in pending.iter().enumerate() {
            let ready = catalog.services[s as usize]
                .inputs
                .iter()
                .try_fold(Time::default(), |ready, &i| sim.available.get(&i).map(|&t| ready.max(t)));
            if let Some(ready) = ready {
                let done = ready.after(step_ms(s as usize));
                if next.is_none_or(|(_, d, _)| done < d) {
                    next = Some((ready, done, k));
                }
            }
        }
        let Some((ready, done, k)) = next else { break };
        let s = pending.swap_remove(k);
        sim.runs.push((s, ready, done));
        for &o in &catalog.services[s as usize].outputs {
            sim.mark(catalog, o, done);
        }
    }
    sim
}

/// The outcome of [`simulate`].
pub(crate) struct Simulation {
    /// The runs, in the order they happen.
    pub(crate) runs: Vec<Run>,
    /// When each concept can first be had, ancestors included.
    pub(crate) available: HashMap<u32, Time>,
}

impl Simulation {
    /// Runs come in order of finish, so the first time a concept is marked is its earliest,
    /// and an ancestor marked already was marked no later.
    fn mark(&mut self, catalog: &Catalog, concept: u32, at: Time) {
        for c in catalog.concepts.ancestors(concept) {
            if self.available.contains_key(&c) {
                break;
            }
            self.available.insert(c, at);
        }
    }

    /// The time at which every wanted concept is available, if ever.
    pub(crate) fn completion(&self, wanted: &[u32]) -> Option<Time> {
        wanted.iter().try_fold(Time::default(), |latest, w| self.available.get(w).map(|&t| latest.max(t)))
    }
}

/// Drops services whose removal keeps the goal met no later than `goal_time`, trying the
/// least preferred first. One pass suffices: removing services only ever makes less
/// available, so a service that could not go before cannot go later. `pinned` services stay.
pub(crate) fn prune(
    scope: &Scope<'_>,
    mut selected: Vec<u32>,
    goal_time: Time,
    prefer: Preference<'_>,
    pinned: &[u32],
) -> Vec<u32> {
    let Scope { catalog, provided, wanted, step_ms } = *scope;
    let mut order: Vec<u32> = selected.iter().copied().filter(|s| !pinned.contains(s)).collect();
    order.sort_by(|&a, &b| prefer(b as usize).total_cmp(&prefer(a as usize)));
    for candidate in order {
        let rest: Vec<u32> = selected.iter().copied().filter(|&s| s != candidate).collect();
        let sim = simulate(catalog, provided, &rest, step_ms);
        if sim.runs.len() == rest.len() && sim.completion(wanted).is_some_and(|t| t <= goal_time) {
            selected = rest;
        }
    }
    selected
}

/// Explains each wanted concept the forward search could not reach.
pub(crate) fn explain(catalog: &Catalog, fwd: &Forward, wanted: &[u32], usable: &[bool]) -> Vec<Missing> {
    let name = |c: u32| catalog.concepts.name(c).to_owned();
    wanted
        .iter()
        .filter(|&&w| fwd.available[w as usize].is_never())
        .map(|&w| {
            let mut chain = Vec::new();
            let mut concept = w;
            let mut seen = vec![w];
            // Follow the producer with the fewest unreachable inputs down to a concept no
            // usable service produces. Bounded: every step visits a new concept.
            while let Some(&s) =
                catalog.producers[concept as usize].iter().filter(|&&s| usable[s as usize]).min_by_key(|&&s| {
                    catalog.services[s as usize]
                        .inputs
                        .iter()
                        .filter(|&&i| fwd.available[i as usize].is_never())
                        .count()
                })
            {
                let service = &catalog.services[s as usize];
                let Some(&input) =
                    service.inputs.iter().find(|&&i| fwd.available[i as usize].is_never() && !seen.contains(&i))
                else {
                    break;
                };
                chain.push((service.spec.id().to_string(), name(input)));
                seen.push(input);
                concept = input;
            }
            Missing { wanted: name(w), chain }
        })
        .collect()
}
