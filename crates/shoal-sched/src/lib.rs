//! The scheduler: a pure function from a state snapshot to a [`Plan`].
//!
//! Two halves, as in Nomad: *reconcile* compares what each service wants
//! with the tasks that exist (which to keep, which to stop because their
//! node died, was drained or tainted `NoExecute`, or their spec changed, and
//! which slots are missing); *place* chooses a node for each missing slot.
//!
//! Placing a task: the nodes that admit a service (alive, not drained,
//! constraints hold, taints tolerated) are computed once per distinct set of
//! constraints and tolerations. From a seeded random point in that list the
//! scheduler takes up to [`Options::candidates`] nodes with room (and under
//! the service's spread limits) and scores them: the strategy (bin-pack
//! prefers the fuller node, spread the emptier), affinities, evenness over
//! spread labels, fewer replicas of the same service on one node, and a
//! penalty for `PreferNoSchedule` taints. Higher priorities are placed
//! first; a task that fits nowhere may take the room of lower-priority
//! tasks, which wait for room elsewhere. What fits nowhere is reported with
//! the reasons counted over all nodes.
//!
//! The state machine re-checks every placement on apply
//! (`shoal_state::fit`), so a stale snapshot can never over-commit a node.
//!
//! Where each part lives:
//!
//! - `reconcile`: which tasks stay, which stop, which are forgotten.
//! - `rolling`: a changed service's tasks replaced batch by batch.
//! - `admitting`: the nodes that admit a service, once per set of rules.
//! - `place`: a node for each missing slot, from a sample of candidates.
//! - `score`: how well a candidate suits one more task.
//! - `spread`: a service's tasks per label value, for limits and evenness.
//! - `preempt`: room made by stopping lower-priority tasks.
//! - `unplaced`: why what fits nowhere fits nowhere.

mod admitting;
mod place;
mod preempt;
mod reconcile;
mod rolling;
mod score;
mod spread;
mod standby;
mod unplaced;

pub mod duties;

pub use standby::{prepull_nodes, standby, standby_among, standby_key};

use std::collections::BTreeMap;

use shoal_state::{FastMap as HashMap, FastSet as HashSet};

use shoal_state::fit::{self, Request};
use shoal_state::{Plan, State, StopReason, PLACEMENTS_PER_PLAN_MAX};
use shoal_types::{Constraint, Node, ServiceSpec, TaintEffect, Task, Toleration};

use preempt::Victim;
use spread::Column;

/// Nodes with room scored per placement by default. A placement then costs
/// the same in any large cluster, and when the nodes' order says nothing
/// about how well they suit a task, the best of 16 is on average better
/// than 16 in 17 of all the nodes.
const CANDIDATES_SCORED_DEFAULT: usize = 16;

/// Preemptions in one plan by default (each stops tasks on one node): a
/// bound on the running work one plan displaces and on its time, as each
/// preemption looks at every admitting node; the rest waits for the next run.
const PREEMPTIONS_PER_PLAN_DEFAULT: usize = 1000;

/// Knobs of one scheduling run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Placements in one plan at most; the rest wait for the next run.
    pub placements_max: usize,
    /// Nodes with room scored per placement; small clusters are scored in full.
    pub candidates: usize,
    /// Seeds the choice of where in the node list each search starts.
    pub seed: u64,
    /// Preemptions (tasks stopped to make room) in one plan at most.
    pub preemptions_max: usize,
    /// The leader's clock as the run starts: when a rolling update's new
    /// tasks have served for long enough. The state holds no clock.
    pub now_ms: u64,
    /// The log format every node reads, as the leader knows it: below 13
    /// a changed service is replaced at once, as older releases do.
    pub format: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            placements_max: PLACEMENTS_PER_PLAN_MAX,
            candidates: CANDIDATES_SCORED_DEFAULT,
            seed: 0,
            preemptions_max: PREEMPTIONS_PER_PLAN_DEFAULT,
            now_ms: 0,
            format: shoal_state::LOG_VERSION,
        }
    }
}

/// The plan for a state with the default options, at time 0 (a rolling
/// update then begins its first batch and no more).
pub fn reconcile(state: &State) -> Plan {
    reconcile_with(state, &Options::default())
}

/// The plan for a state at `now_ms` in a cluster of log `format`, with
/// the default options.
pub fn reconcile_at(state: &State, now_ms: u64, format: u32) -> Plan {
    reconcile_with(
        state,
        &Options {
            now_ms,
            format,
            ..Options::default()
        },
    )
}

/// The plan for a state: reconcile, relieve nodes that came back smaller,
/// then place what is missing.
pub fn reconcile_with(state: &State, options: &Options) -> Plan {
    let mut scheduler = Scheduler::new(state, options);
    scheduler.classify_tasks();
    scheduler.roll();
    scheduler.relieve_overcommitted_nodes();
    scheduler.place_missing();
    scheduler.plan
}

/// A service's constraints, tolerations and what its nodes must allow:
/// what decides where it may run.
type Rules<'a> = (&'a [Constraint], &'a [Toleration], shoal_types::Needs);

type LastService<'a> = Option<(&'a str, &'a str, Option<(&'a ServiceSpec, u64, u32)>)>;

/// One node as the scheduler sees it during a run.
struct NodeInfo<'a> {
    node: &'a Node,
    /// Copied from the node, so that scoring reads one dense array.
    allocatable: Request,
    /// Whether the node has a `PreferNoSchedule` taint at all.
    soft_tainted: bool,
    /// Requests of the desired-running tasks, as the plan changes them.
    used: Request,
    /// Desired-running tasks, counted as the plan adds and stops them.
    tasks: u32,
    /// Host ports its desired-running tasks publish (mostly none).
    host_ports: Vec<fit::HostPort>,
}

struct Scheduler<'a> {
    state: &'a State,
    options: &'a Options,
    rng: shoal_types::stable::SplitMix64,
    nodes: Vec<NodeInfo<'a>>,
    index: HashMap<&'a str, u32>,
    /// Slots held by tasks the plan keeps.
    filled: HashSet<(u32, u32)>,
    /// A number for each (app, service) of the current apps, so that the
    /// hot sets key on numbers instead of hashing and comparing names.
    service_ids: HashMap<(&'a str, &'a str), u32>,
    /// Kept tasks per service and node.
    per_node: HashMap<u32, BTreeMap<u32, u32>>,
    /// Nodes admitting a set of constraints and tolerations, in index order.
    admitting: HashMap<Rules<'a>, std::rc::Rc<[u32]>>,
    /// Label values of every node, per label key, built when a spread needs it.
    columns: HashMap<&'a str, std::rc::Rc<Column<'a>>>,
    /// Nodes by label value, per label key, built when a constraint needs it.
    labels: HashMap<&'a str, std::rc::Rc<HashMap<&'a str, Vec<u32>>>>,
    /// Distinct label values among admitting nodes, per constraint set and label.
    distinct: HashMap<(Rules<'a>, &'a str), usize>,
    /// Kept tasks per node, built on the first preemption.
    victims: Option<Vec<Vec<Victim<'a>>>>,
    stopped: HashSet<&'a str>,
    /// Services (by number) that lose a task to its node this run (dead,
    /// drained, tainted, shrunk, no longer allowing it): the task is
    /// placed again, on the node holding the image ahead if it can.
    displaced: HashSet<u32>,
    /// Kept tasks of an older spec, per service, for `rolling` to decide.
    outdated: HashMap<u32, Vec<(&'a Task, StopReason)>>,
    /// The outdated task each rolling slot keeps, by (service, slot).
    rolling_old: HashMap<(u32, u32), (&'a Task, StopReason)>,
    /// Slots whose new task starts beside the outdated one.
    beside: HashSet<(u32, u32)>,
    /// Slots two kept tasks hold (an outdated one and its new one): one of
    /// them stopping leaves the slot held.
    doubled: HashSet<(u32, u32)>,
    /// The last (app, service) looked up and what was found.
    last_service: std::cell::Cell<LastService<'a>>,
    preemptions: usize,
    /// Most desired-running tasks on any node (an upper bound during a run,
    /// the scale of the count penalty for tasks that request nothing).
    most_tasks: u32,
    plan: Plan,
}

impl<'a> Scheduler<'a> {
    fn new(state: &'a State, options: &'a Options) -> Self {
        let nodes: Vec<NodeInfo> = state
            .nodes
            .values()
            .map(|node| NodeInfo {
                node,
                allocatable: fit::allocatable(node),
                soft_tainted: node.has_taint_effect(TaintEffect::PreferNoSchedule),
                used: Request::default(),
                tasks: 0,
                host_ports: Vec::new(),
            })
            .collect();
        let index: HashMap<&str, u32> = nodes
            .iter()
            .enumerate()
            .map(|(at, info)| (info.node.name.as_str(), at as u32))
            .collect();
        let service_ids = services_of(state)
            .map(|(app, _, service)| (app, service.name.as_str()))
            .enumerate()
            .map(|(id, key)| (key, id as u32))
            .collect();
        // Node usage is counted in `classify_tasks`, in the same pass over
        // the tasks (a pass is mostly cache misses; one is enough).
        Scheduler {
            state,
            options,
            rng: shoal_types::stable::SplitMix64::new(
                options.seed ^ state.applied_index.rotate_left(32),
            ),
            nodes,
            index,
            filled: HashSet::default(),
            service_ids,
            per_node: HashMap::default(),
            admitting: HashMap::default(),
            distinct: HashMap::default(),
            labels: HashMap::default(),
            columns: HashMap::default(),
            victims: None,
            stopped: HashSet::default(),
            displaced: HashSet::default(),
            outdated: HashMap::default(),
            rolling_old: HashMap::default(),
            beside: HashSet::default(),
            doubled: HashSet::default(),
            last_service: std::cell::Cell::new(None),
            preemptions: 0,
            most_tasks: 0,
            plan: Plan::default(),
        }
    }

    /// The number of a current service (`u32::MAX` for one that is gone).
    fn sid(&self, app: &str, service: &ServiceSpec) -> u32 {
        self.service_ids
            .get(&(app, service.name.as_str()))
            .copied()
            .unwrap_or(u32::MAX)
    }

    fn used(&self, at: u32) -> Request {
        self.nodes[at as usize].used
    }
}

/// Every service of every app, with its app's name and version.
fn services_of(state: &State) -> impl Iterator<Item = (&str, u64, &ServiceSpec)> {
    state.apps.values().flat_map(|app| {
        app.spec
            .services
            .iter()
            .map(move |service| (app.spec.name.as_str(), app.version, service))
    })
}

#[cfg(test)]
mod tests;
