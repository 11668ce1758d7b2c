//! [`OrchestrationPlanner`]: the seed design's pipeline made real —
//! `apply_constraints`, `generate_initial_plan`, `optimize_plan`, `validate_plan`.

use std::collections::{BTreeMap, HashMap};

use baton_core::{Goal, Objective, Plan, PlanTask, PredictedQos, ServiceId, StepId};

use crate::catalog::Catalog;
use crate::compose::{self, Time};
use crate::error::{Error, Missing, Result};
use crate::validate;

/// Most ranked alternatives kept per task for failover.
pub const MAX_ALTERNATIVES: usize = 8;

/// Composes plans for goals over a [`Catalog`]. Stateless: one planner serves any number of
/// catalogs and goals at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrchestrationPlanner;

/// The services a goal's constraints allow, by catalog index.
#[derive(Debug, Clone)]
pub struct Allowed(Vec<bool>);

/// A composition before optimization: the selected services and the time the goal is met.
#[derive(Debug, Clone)]
pub struct Composition {
    selected: Vec<u32>,
    goal_time: Time,
    provided: Vec<u32>,
    wanted: Vec<u32>,
}

impl Composition {
    /// Number of services selected.
    pub fn len(&self) -> usize {
        self.selected.len()
    }

    /// True when the goal needs no service.
    pub fn is_empty(&self) -> bool {
        self.selected.is_empty()
    }
}

impl OrchestrationPlanner {
    /// Composes, optimizes and validates a plan for `goal`.
    pub fn plan(&self, catalog: &Catalog, goal: &Goal) -> Result<Plan> {
        let allowed = self.apply_constraints(catalog, goal)?;
        let composition = self.generate_initial_plan(catalog, goal, &allowed)?;
        let plan = self.optimize_plan(catalog, goal, &allowed, composition)?;
        self.validate_plan(catalog, goal, &plan)?;
        Ok(plan)
    }

    /// The services the goal's constraints allow: not excluded, of an allowed protocol, and
    /// offering the required security. Included services must be among them.
    pub fn apply_constraints(&self, catalog: &Catalog, goal: &Goal) -> Result<Allowed> {
        check_goal(goal)?;
        let c = &goal.constraints;
        let allowed: Vec<bool> = catalog
            .services
            .iter()
            .map(|s| {
                !c.exclude_services.contains(s.spec.id())
                    && (c.protocols.is_empty() || c.protocols.contains(&s.spec.protocol()))
                    && c.security.satisfied_by(&s.spec)
            })
            .collect();
        for id in &c.include_services {
            let reason = match catalog.by_id.get(id) {
                None => "is not registered (or not healthy)",
                Some(&s) if !allowed[s as usize] => "is ruled out by the other constraints",
                Some(_) => continue,
            };
            return Err(Error::IncludedServiceUnusable { service: id.to_string(), reason: reason.to_owned() });
        }
        Ok(Allowed(allowed))
    }

    /// Composes the services the goal needs: a forward search for the earliest time (fewest
    /// layers, or lowest response time under a latency objective) at which every wanted concept
    /// can be had, then a backward greedy selection of few services meeting that time, then a
    /// pass that drops any service the rest can do without.
    pub fn generate_initial_plan(&self, catalog: &Catalog, goal: &Goal, allowed: &Allowed) -> Result<Composition> {
        let provided: Vec<u32> = goal.provided.iter().filter_map(|c| catalog.concepts.lookup(c)).collect();
        let mut unknown = Vec::new();
        let mut wanted = Vec::new();
        for name in &goal.wanted {
            match catalog.concepts.lookup(name) {
                Some(c) => wanted.push(c),
                None => unknown.push(Missing { wanted: name.clone(), chain: Vec::new() }),
            }
        }
        let usable = self.usable(catalog, goal, allowed, &provided, &wanted);
        let step = step_weight(catalog, goal.objective);
        let fwd = compose::forward(catalog, &provided, &wanted, &usable, &step);
        if !unknown.is_empty() || fwd.goal_time.layers == u32::MAX {
            let mut missing = unknown;
            missing.extend(compose::explain(catalog, &fwd, &wanted, &usable));
            return Err(Error::Unsatisfiable { missing });
        }
        let prefer = preference(catalog, goal);
        let mut selected = compose::select(catalog, &fwd, &wanted, &prefer);
        for id in &goal.constraints.include_services {
            let s = catalog.by_id[id];
            if fwd.finish[s as usize].layers == u32::MAX {
                return Err(Error::IncludedServiceUnusable {
                    service: id.to_string(),
                    reason: "cannot run in time: its inputs are not available early enough".to_owned(),
                });
            }
            if !selected.contains(&s) {
                selected.push(s);
            }
        }
        let included: Vec<u32> = goal.constraints.include_services.iter().map(|id| catalog.by_id[id]).collect();
        let scope = compose::Scope { catalog, provided: &provided, wanted: &wanted, step_ms: &step };
        let selected = compose::prune(&scope, selected, fwd.goal_time, &prefer, &included);
        Ok(Composition { selected, goal_time: fwd.goal_time, provided, wanted })
    }

    /// The usable services: allowed, and under a throughput objective only those at or above
    /// the highest bottleneck throughput at which the goal can still be met.
    fn usable(&self, catalog: &Catalog, goal: &Goal, allowed: &Allowed, provided: &[u32], wanted: &[u32]) -> Vec<bool> {
        if goal.objective != Objective::Throughput {
            return allowed.0.clone();
        }
        let mut levels: Vec<f64> = catalog
            .services
            .iter()
            .zip(&allowed.0)
            .filter(|(_, ok)| **ok)
            .map(|(s, _)| s.spec.qos().throughput_rps)
            .collect();
        levels.sort_by(|a, b| b.total_cmp(a));
        levels.dedup();
        let at_least = |floor: f64| -> Vec<bool> {
            catalog.services.iter().zip(&allowed.0).map(|(s, &ok)| ok && s.spec.qos().throughput_rps >= floor).collect()
        };
        let reaches = |usable: &[bool]| {
            compose::forward(catalog, provided, wanted, usable, &|_| 0.0).goal_time.layers != u32::MAX
        };
        // Feasibility grows as the floor drops: binary search the first level that works.
        let (mut lo, mut hi) = (0usize, levels.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if reaches(&at_least(levels[mid])) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        match levels.get(lo) {
            Some(&floor) => at_least(floor),
            None => allowed.0.clone(),
        }
    }

    /// Chooses among functionally equivalent services per task by the objective, keeps the
    /// ranked alternatives for failover, lays out the data flow and the parallel levels,
    /// predicts QoS, and checks the plan-wide constraints.
    pub fn optimize_plan(
        &self,
        catalog: &Catalog,
        goal: &Goal,
        allowed: &Allowed,
        composition: Composition,
    ) -> Result<Plan> {
        let step = step_weight(catalog, goal.objective);
        let prefer = preference(catalog, goal);
        let Composition { mut selected, goal_time, provided, wanted } = composition;
        // Swap each task for a better equivalent, if one is not already in the plan.
        let mut built = build(catalog, &provided, &wanted, &selected, &step);
        for k in 0..selected.len() {
            let s = selected[k];
            let best = alternatives(catalog, &built, s, allowed)
                .into_iter()
                .filter(|a| !selected.contains(a))
                .min_by(|&a, &b| prefer(a as usize).total_cmp(&prefer(b as usize)));
            if let Some(a) = best
                && prefer(a as usize) < prefer(s as usize)
                && !goal.constraints.include_services.contains(catalog.services[s as usize].spec.id())
            {
                let mut trial = selected.clone();
                trial[k] = a;
                let sim = compose::simulate(catalog, &provided, &trial, &step);
                let done = sim.completion(&wanted);
                // A latency objective must not lose the optimum the search found.
                let in_time = goal.objective != Objective::Latency || done.is_some_and(|t| t <= goal_time);
                if sim.runs.len() == trial.len() && done.is_some() && in_time {
                    selected = trial;
                    built = build(catalog, &provided, &wanted, &selected, &step);
                }
            }
        }
        let plan = to_plan(catalog, &built, allowed, &prefer);
        check_constraints(goal, &plan)?;
        Ok(plan)
    }

    /// Proves `plan` complete (every wanted concept and every task input has a source),
    /// consistent (acyclic, type-correct data flow, no dangling task, levels agree with the
    /// dependencies) and feasible (constraints hold; every service is in the catalog, which
    /// holds only healthy services).
    pub fn validate_plan(&self, catalog: &Catalog, goal: &Goal, plan: &Plan) -> Result<()> {
        validate::plan(catalog, goal, plan)?;
        check_constraints(goal, plan)
    }
}

fn check_goal(goal: &Goal) -> Result<()> {
    if goal.wanted.is_empty() {
        return Err(Error::EmptyGoal);
    }
    let c = &goal.constraints;
    for (field, value) in [
        ("constraints.max_latency_ms", c.max_latency_ms),
        ("constraints.max_cost", c.max_cost),
        ("constraints.min_availability", c.min_availability),
    ] {
        if let Some(v) = value
            && (!v.is_finite() || v < 0.0)
        {
            return Err(baton_core::Error::invalid(field, v, "must be a finite number >= 0").into());
        }
    }
    if let Some(a) = c.min_availability
        && a > 1.0
    {
        return Err(baton_core::Error::invalid("constraints.min_availability", a, "must be in [0, 1]").into());
    }
    let w = &goal.weights;
    for (field, value) in [
        ("weights.latency", w.latency),
        ("weights.throughput", w.throughput),
        ("weights.cost", w.cost),
        ("weights.availability", w.availability),
    ] {
        if !value.is_finite() || value < 0.0 {
            return Err(baton_core::Error::invalid(field, value, "must be a finite number >= 0").into());
        }
    }
    if let Some(id) = c.include_services.iter().find(|id| c.exclude_services.contains(id)) {
        return Err(baton_core::Error::invalid("constraints.include_services", id, "is also excluded").into());
    }
    Ok(())
}

/// The forward search's step weight: latency under a latency objective (or a weighted one
/// that weighs latency), else nothing, so time counts layers.
fn step_weight(catalog: &Catalog, objective: Objective) -> impl Fn(usize) -> f64 + '_ {
    let latency = matches!(objective, Objective::Latency | Objective::Weighted);
    move |s| if latency { catalog.services[s].spec.qos().latency_p50_ms } else { 0.0 }
}

/// Lower is better: the figure the objective minimises, per service.
fn preference<'a>(catalog: &'a Catalog, goal: &Goal) -> impl Fn(usize) -> f64 + 'a {
    let (objective, w) = (goal.objective, goal.weights);
    move |s| {
        let q = catalog.services[s].spec.qos();
        match objective {
            Objective::Latency => q.latency_p50_ms,
            Objective::Throughput => -q.throughput_rps,
            Objective::Cost => q.cost,
            // Normalised so that no unit dominates: each term lies in [0, 1).
            Objective::Weighted => {
                w.latency * (q.latency_p50_ms / (q.latency_p50_ms + 100.0))
                    + w.cost * (q.cost / (q.cost + 1.0))
                    + w.throughput * (1.0 - q.throughput_rps / (q.throughput_rps + 100.0))
                    + w.availability * (1.0 - q.availability)
            }
        }
    }
}

/// A run of the selected services: when each starts and finishes, and where each of its
/// inputs comes from.
struct Built {
    /// (service, start, finish) in the order they can run.
    runs: Vec<compose::Run>,
    /// Per run, per input: (input, producing service or None for the request, produced concept).
    sources: Vec<Vec<(u32, Option<u32>, u32)>>,
    /// Wanted concepts with the task (or the request) and concept that meets each.
    delivers: Vec<(u32, Option<u32>, u32)>,
    /// When each concept can first be had in this run, ancestors included.
    available: HashMap<u32, Time>,
}

fn build(catalog: &Catalog, provided: &[u32], wanted: &[u32], selected: &[u32], step: &dyn Fn(usize) -> f64) -> Built {
    let sim = compose::simulate(catalog, provided, selected, step);
    let runs = sim.runs;
    // The earliest source of `want` available by `by`: the request first, then a task.
    let source = |want: u32, by: Time| -> Option<(Option<u32>, u32)> {
        if let Some(&p) = provided.iter().find(|&&p| catalog.concepts.satisfies(p, want)) {
            return Some((None, p));
        }
        runs.iter()
            .filter(|&&(_, _, f)| f <= by)
            .flat_map(|&(t, _, f)| catalog.services[t as usize].outputs.iter().map(move |&o| (f, t, o)))
            .filter(|&(_, _, o)| catalog.concepts.satisfies(o, want))
            .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)))
            .map(|(_, t, o)| (Some(t), o))
    };
    let sources = runs
        .iter()
        .map(|&(s, start, _)| {
            catalog.services[s as usize]
                .inputs
                .iter()
                .filter_map(|&i| source(i, start).map(|(from, c)| (i, from, c)))
                .collect()
        })
        .collect();
    let last = runs.iter().map(|r| r.2).max().unwrap_or_default();
    let delivers = wanted.iter().filter_map(|&w| source(w, last).map(|(from, c)| (w, from, c))).collect();
    Built { runs, sources, delivers, available: sim.available }
}

/// Services that could stand in for `s` in `built`: usable, not `s`, with every input
/// available when `s` starts, and producing every concept `s` delivers.
fn alternatives(catalog: &Catalog, built: &Built, s: u32, allowed: &Allowed) -> Vec<u32> {
    let Some(k) = built.runs.iter().position(|r| r.0 == s) else { return Vec::new() };
    let start = built.runs[k].1;
    let mut delivered: Vec<u32> = Vec::new();
    for sources in &built.sources {
        delivered.extend(sources.iter().filter(|(_, from, _)| *from == Some(s)).map(|&(i, _, _)| i));
    }
    delivered.extend(built.delivers.iter().filter(|(_, from, _)| *from == Some(s)).map(|&(w, _, _)| w));
    delivered.sort_unstable();
    delivered.dedup();
    let Some(&seed) = delivered.iter().min_by_key(|&&d| catalog.producers[d as usize].len()) else {
        return Vec::new();
    };
    let available = |i: u32| built.available.get(&i).is_some_and(|&t| t <= start);
    catalog.producers[seed as usize]
        .iter()
        .copied()
        .filter(|&a| a != s && allowed.0[a as usize])
        .filter(|&a| {
            let svc = &catalog.services[a as usize];
            delivered.iter().all(|&d| svc.outputs.iter().any(|&o| catalog.concepts.satisfies(o, d)))
                && svc.inputs.iter().all(|&i| available(i))
        })
        .collect()
}

fn step_id(catalog: &Catalog, s: u32) -> StepId {
    StepId::new(catalog.services[s as usize].spec.id().as_str()).expect("service ids follow the step id rule")
}

fn to_plan(catalog: &Catalog, built: &Built, allowed: &Allowed, prefer: &dyn Fn(usize) -> f64) -> Plan {
    let name = |c: u32| catalog.concepts.name(c).to_owned();
    let mut data_flow = Vec::new();
    let mut tasks = Vec::new();
    for (&(s, _, _), sources) in built.runs.iter().zip(&built.sources) {
        let mut depends_on: Vec<StepId> =
            sources.iter().filter_map(|(_, from, _)| from.map(|t| step_id(catalog, t))).collect();
        depends_on.sort();
        depends_on.dedup();
        for &(input, from, produced) in sources {
            data_flow.push(baton_core::DataFlow {
                from: from.map(|t| step_id(catalog, t)),
                from_concept: name(produced),
                to: step_id(catalog, s),
                to_concept: name(input),
            });
        }
        let mut alternatives = alternatives(catalog, built, s, allowed);
        alternatives.sort_by(|&a, &b| {
            prefer(a as usize)
                .total_cmp(&prefer(b as usize))
                .then_with(|| catalog.services[a as usize].spec.id().cmp(catalog.services[b as usize].spec.id()))
        });
        alternatives.truncate(MAX_ALTERNATIVES);
        let spec = &catalog.services[s as usize].spec;
        tasks.push(PlanTask {
            id: step_id(catalog, s),
            service: spec.id().clone(),
            alternatives: alternatives.iter().map(|&a| catalog.services[a as usize].spec.id().clone()).collect(),
            inputs: spec.inputs().to_vec(),
            outputs: spec.outputs().to_vec(),
            depends_on,
        });
    }
    let levels = levels(&tasks);
    let mut order: HashMap<StepId, usize> = HashMap::new();
    for (l, level) in levels.iter().enumerate() {
        for id in level {
            order.insert(id.clone(), l);
        }
    }
    tasks.sort_by(|a, b| order[&a.id].cmp(&order[&b.id]).then_with(|| a.id.cmp(&b.id)));
    let predicted = predict(catalog, &tasks);
    Plan { tasks, data_flow, levels, predicted }
}

/// Topological levels: a task's level is one more than its deepest dependency's.
pub(crate) fn levels(tasks: &[PlanTask]) -> Vec<Vec<StepId>> {
    let by_id: HashMap<&StepId, &PlanTask> = tasks.iter().map(|t| (&t.id, t)).collect();
    let mut level: HashMap<&StepId, usize> = HashMap::new();
    fn depth<'a>(
        id: &'a StepId,
        by_id: &HashMap<&'a StepId, &'a PlanTask>,
        level: &mut HashMap<&'a StepId, usize>,
        guard: usize,
    ) -> usize {
        if let Some(&l) = level.get(id) {
            return l;
        }
        // A cycle cannot come from the builder; the guard keeps a hand-made plan from looping.
        if guard > by_id.len() {
            return 0;
        }
        let l = by_id
            .get(id)
            .map(|t| t.depends_on.iter().map(|d| depth(d, by_id, level, guard + 1) + 1).max().unwrap_or(0))
            .unwrap_or(0);
        level.insert(id, l);
        l
    }
    let mut grouped: BTreeMap<usize, Vec<StepId>> = BTreeMap::new();
    for t in tasks {
        let l = depth(&t.id, &by_id, &mut level, 0);
        grouped.entry(l).or_default().push(t.id.clone());
    }
    grouped
        .into_values()
        .map(|mut ids| {
            ids.sort();
            ids
        })
        .collect()
}

/// Plan-wide QoS: latency along the critical path (p50), bottleneck throughput, summed cost,
/// multiplied availability. A plan with no task has zero latency, cost and throughput and
/// availability 1.
pub(crate) fn predict(catalog: &Catalog, tasks: &[PlanTask]) -> PredictedQos {
    let qos = |id: &ServiceId| catalog.service(id).map(|s| *s.qos()).unwrap_or_default();
    let mut finish: HashMap<&StepId, f64> = HashMap::new();
    // Tasks come in level order, so dependencies are done first.
    let mut ordered: Vec<&PlanTask> = tasks.iter().collect();
    let levels = levels(tasks);
    let rank: HashMap<&StepId, usize> =
        levels.iter().enumerate().flat_map(|(l, ids)| ids.iter().map(move |id| (id, l))).collect();
    ordered.sort_by_key(|t| rank.get(&t.id).copied().unwrap_or(0));
    let mut predicted = PredictedQos { latency_ms: 0.0, throughput_rps: 0.0, cost: 0.0, availability: 1.0 };
    let mut throughput = f64::INFINITY;
    for t in ordered {
        let q = qos(&t.service);
        let ready = t.depends_on.iter().filter_map(|d| finish.get(d)).fold(0.0f64, |a, &b| a.max(b));
        let done = ready + q.latency_p50_ms;
        finish.insert(&t.id, done);
        predicted.latency_ms = predicted.latency_ms.max(done);
        predicted.cost += q.cost;
        predicted.availability *= q.availability;
        throughput = throughput.min(q.throughput_rps);
    }
    if throughput.is_finite() {
        predicted.throughput_rps = throughput;
    }
    predicted
}

fn check_constraints(goal: &Goal, plan: &Plan) -> Result<()> {
    let c = &goal.constraints;
    let p = &plan.predicted;
    if let Some(max) = c.max_services
        && plan.tasks.len() > max as usize
    {
        return Err(Error::ConstraintViolated {
            constraint: "max_services",
            limit: f64::from(max),
            predicted: plan.tasks.len() as f64,
        });
    }
    let checks = [
        ("max_latency_ms", c.max_latency_ms, p.latency_ms, true),
        ("max_cost", c.max_cost, p.cost, true),
        ("min_availability", c.min_availability, p.availability, false),
    ];
    for (constraint, bound, predicted, upper) in checks {
        if let Some(limit) = bound {
            // A hair of slack for float sums that land on the bound.
            let breaks = if upper { predicted > limit * (1.0 + 1e-12) } else { predicted < limit * (1.0 - 1e-12) };
            if breaks {
                return Err(Error::ConstraintViolated { constraint, limit, predicted });
            }
        }
    }
    Ok(())
}
