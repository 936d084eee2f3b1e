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

pub mod duties;

use std::collections::BTreeMap;

use shoal_state::{FastMap as HashMap, FastSet as HashSet};

use shoal_state::fit::{self, Reject, Request};
use shoal_state::{
    Placement, Plan, State, Unplaced, CHANGES_PER_PLAN_MAX, PLACEMENTS_PER_PLAN_MAX,
};
use shoal_types::Labels;
use shoal_types::{
    Constraint, DesiredState, Kind, Node, RestartPolicy, ServiceSpec, Strategy, TaintEffect, Task,
    TaskState, Toleration,
};

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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            placements_max: PLACEMENTS_PER_PLAN_MAX,
            candidates: 16,
            seed: 0,
            preemptions_max: 1000,
        }
    }
}

/// Up to this many nodes are all scored, whatever `candidates` says.
const SCORE_ALL_NODES_MAX: usize = 64;

pub fn reconcile(state: &State) -> Plan {
    reconcile_with(state, &Options::default())
}

pub fn reconcile_with(state: &State, options: &Options) -> Plan {
    let mut scheduler = Scheduler::new(state, options);
    scheduler.classify_tasks();
    scheduler.relieve_overcommitted_nodes();
    scheduler.place_missing();
    scheduler.plan
}

/// A service's constraints and tolerations: what decides where it may run.
type Rules<'a> = (&'a [Constraint], &'a [Toleration]);

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

/// A kept task another one of higher priority may displace.
struct Victim<'a> {
    task: &'a Task,
    priority: u32,
    request: Request,
}

struct Scheduler<'a> {
    state: &'a State,
    options: &'a Options,
    rng: SplitMix,
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
            rng: SplitMix(options.seed ^ state.applied_index.rotate_left(32)),
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
            last_service: std::cell::Cell::new(None),
            preemptions: 0,
            most_tasks: 0,
            plan: Plan::default(),
        }
    }

    /// Decides for every task whether it stays, stops or is forgotten.
    fn classify_tasks(&mut self) {
        let state = self.state;
        for task in state.tasks.values() {
            match task.desired {
                DesiredState::Running => {
                    let at = self.index.get(task.node.as_str()).copied();
                    if let Some(at) = at {
                        let info = &mut self.nodes[at as usize];
                        info.used.add(Request::of(&task.spec));
                        info.tasks += 1;
                        info.host_ports.extend(fit::host_ports(&task.spec));
                    }
                    match self.keeps(task, at) {
                        Some(sid) => self.keep(sid, task.slot, at),
                        None => self.stop(task),
                    }
                }
                DesiredState::Stopped => {
                    if task.status.state == TaskState::Stopped
                        && self.plan.remove.len() < CHANGES_PER_PLAN_MAX
                    {
                        self.plan.remove.push(task.id.clone());
                    }
                }
            }
        }
        self.most_tasks = self.nodes.iter().map(|info| info.tasks).max().unwrap_or(0);
    }

    /// The current spec and version of a task's service. Tasks come in id
    /// order, so runs of them share a service: the last answer is kept.
    fn service_of(&self, task: &Task) -> Option<(&'a ServiceSpec, u64, u32)> {
        if let Some((app, service, found)) = self.last_service.get() {
            if app == task.app && service == task.service {
                return found;
            }
        }
        let state: &'a State = self.state;
        let (app_name, found) = match state.apps.get_key_value(&task.app) {
            Some((name, app)) => (
                name.as_str(),
                app.spec
                    .services
                    .iter()
                    .find(|spec| spec.name == task.service)
                    .and_then(|spec| {
                        let sid = self.service_ids.get(&(name.as_str(), spec.name.as_str()))?;
                        Some((spec, app.version, *sid))
                    }),
            ),
            None => return None,
        };
        if let Some((spec, _, _)) = found {
            self.last_service
                .set(Some((app_name, spec.name.as_str(), found)));
        }
        found
    }

    /// Whether the plan keeps a desired-running task (on node index `at`),
    /// with its service's number when it does.
    fn keeps(&self, task: &Task, at: Option<u32>) -> Option<u32> {
        let (service, version, sid) = self.service_of(task)?;
        self.keeps_as(task, at, service, version, sid)
            .then_some(sid)
    }

    fn keeps_as(
        &self,
        task: &Task,
        at: Option<u32>,
        service: &'a ServiceSpec,
        version: u64,
        sid: u32,
    ) -> bool {
        // A task of the current version runs the current spec by
        // construction; older ones run it when only `replicas` changed.
        if task.app_version != version && !task.spec.same_task_as(service) {
            return false;
        }
        let node = at.map(|at| self.nodes[at as usize].node);
        // A batch task that is done stays done, whatever became of its node.
        if service.kind == Kind::Batch && batch_done(task) {
            return task.slot < service.replicas;
        }
        let Some(node) = node.filter(|node| node.status == shoal_types::NodeStatus::Alive) else {
            // Lost with its node: the slot is free (and the node stops the
            // task if it comes back).
            return false;
        };
        if node.drain {
            return false;
        }
        if fit::untolerated(node, service, |effect| effect == TaintEffect::NoExecute).is_some() {
            return false;
        }
        match service.kind {
            Kind::Service | Kind::Batch => task.slot < service.replicas,
            // A global task follows its node's labels and taints, and one per
            // node is enough.
            Kind::Global => {
                fit::admits(node, service).is_ok()
                    && !self
                        .per_node
                        .get(&sid)
                        .is_some_and(|counts| at.is_some_and(|at| counts.contains_key(&at)))
            }
        }
    }

    fn keep(&mut self, sid: u32, slot: u32, at: Option<u32>) {
        self.filled.insert((sid, slot));
        if let Some(at) = at {
            *self.per_node.entry(sid).or_default().entry(at).or_default() += 1;
        }
    }

    fn stop(&mut self, task: &'a Task) {
        if self.plan.stop.len() >= CHANGES_PER_PLAN_MAX || !self.stopped.insert(&task.id) {
            return;
        }
        self.plan.stop.push(task.id.clone());
        if let Some(at) = self.index.get(task.node.as_str()) {
            let info = &mut self.nodes[*at as usize];
            info.used.subtract(Request::of(&task.spec));
            info.tasks = info.tasks.saturating_sub(1);
            fit::release_host_ports(&mut info.host_ports, &task.spec);
        }
    }

    /// The number of a current service (`u32::MAX` for one that is gone).
    fn sid(&self, app: &str, service: &ServiceSpec) -> u32 {
        self.service_ids
            .get(&(app, service.name.as_str()))
            .copied()
            .unwrap_or(u32::MAX)
    }

    /// A node whose tasks request more than it has (it came back smaller)
    /// sheds its lowest-priority tasks until the rest fit.
    fn relieve_overcommitted_nodes(&mut self) {
        let over: Vec<u32> = (0..self.nodes.len() as u32)
            .filter(|at| self.overcommitted(*at))
            .collect();
        if over.is_empty() {
            return;
        }
        let state = self.state;
        for at in over {
            let name = self.nodes[at as usize].node.name.as_str();
            let mut tasks: Vec<&Task> = state
                .tasks
                .values()
                .filter(|task| {
                    task.node == name
                        && task.desired == DesiredState::Running
                        && !self.stopped.contains(task.id.as_str())
                        && Request::of(&task.spec) != Request::default()
                })
                .collect();
            tasks.sort_by_key(|task| (task.spec.priority, std::cmp::Reverse(task.id.as_str())));
            for task in tasks {
                if !self.overcommitted(at) {
                    break;
                }
                self.unkeep(task);
                self.stop(task);
            }
        }
    }

    fn overcommitted(&self, at: u32) -> bool {
        let info = &self.nodes[at as usize];
        info.used.cpu_millis > info.node.cpu_allocatable_millis
            || info.used.memory_bytes > info.node.memory_allocatable_bytes
    }

    fn unkeep(&mut self, task: &'a Task) {
        let Some(&sid) = self
            .service_ids
            .get(&(task.app.as_str(), task.service.as_str()))
        else {
            return;
        };
        self.filled.remove(&(sid, task.slot));
        if let (Some(counts), Some(at)) = (
            self.per_node.get_mut(&sid),
            self.index.get(task.node.as_str()),
        ) {
            if let Some(count) = counts.get_mut(at) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.remove(at);
                }
            }
        }
    }

    /// Places the missing slots of every service, higher priorities first.
    fn place_missing(&mut self) {
        let state = self.state;
        let mut services: Vec<(&'a str, u64, &'a ServiceSpec)> = services_of(state).collect();
        services.sort_by_key(|(app, _, service)| {
            (
                std::cmp::Reverse(service.priority),
                *app,
                service.name.as_str(),
            )
        });
        for (app, version, service) in services {
            // A full plan leaves the rest to the next one, at no cost.
            if self.plan.place.len() >= self.options.placements_max {
                break;
            }
            match service.kind {
                Kind::Service | Kind::Batch => self.place_replicas(app, version, service),
                Kind::Global => self.place_global(app, version, service),
            }
        }
    }

    /// How many values of label `over` the nodes admitting `service` have;
    /// counted once per set of constraints and tolerations.
    fn distinct_values(
        &mut self,
        service: &'a ServiceSpec,
        over: &'a str,
        admitting: &[u32],
    ) -> usize {
        let key = (
            (
                service.placement.constraints.as_slice(),
                service.tolerations.as_slice(),
            ),
            over,
        );
        if let Some(count) = self.distinct.get(&key) {
            return *count;
        }
        let column = self.column(over);
        let mut seen = vec![false; column.values.len()];
        let mut count = 0;
        for at in admitting {
            let id = column.ids[*at as usize] as usize;
            if !seen[id] {
                seen[id] = true;
                count += 1;
            }
        }
        self.distinct.insert(key, count);
        count
    }

    /// Nodes by their value of label `key`, in index order.
    fn label_index(&mut self, key: &'a str) -> std::rc::Rc<HashMap<&'a str, Vec<u32>>> {
        if let Some(index) = self.labels.get(key) {
            return index.clone();
        }
        let mut index: HashMap<&'a str, Vec<u32>> = HashMap::default();
        for (at, info) in self.nodes.iter().enumerate() {
            if let Some(value) = info.node.label(key) {
                index.entry(value).or_default().push(at as u32);
            }
        }
        let index = std::rc::Rc::new(index);
        self.labels.insert(key, index.clone());
        index
    }

    /// Label `key` of every node as dense ids, built once per run and key.
    fn column(&mut self, key: &'a str) -> std::rc::Rc<Column<'a>> {
        if let Some(column) = self.columns.get(key) {
            return column.clone();
        }
        let mut values: Vec<&'a str> = Vec::new();
        let mut ids_of: HashMap<&'a str, u32> = HashMap::default();
        let ids = self
            .nodes
            .iter()
            .map(|info| {
                let value = fit::spread_value(info.node, key);
                *ids_of.entry(value).or_insert_with(|| {
                    values.push(value);
                    values.len() as u32 - 1
                })
            })
            .collect();
        let column = std::rc::Rc::new(Column { ids, values });
        self.columns.insert(key, column.clone());
        column
    }

    /// Shared, not copied: at 100,000 nodes a copy per service adds up.
    fn admitting(&mut self, service: &'a ServiceSpec) -> std::rc::Rc<[u32]> {
        let key = (
            service.placement.constraints.as_slice(),
            service.tolerations.as_slice(),
        );
        if let Some(list) = self.admitting.get(&key) {
            return list.clone();
        }
        // A `KEY == VALUE` constraint narrows the search to the nodes with
        // that label (indexed once per run and key), which at 100,000 nodes
        // saves checking every node against every constraint set.
        let narrowed =
            service
                .placement
                .constraints
                .iter()
                .find_map(|constraint| match &constraint.op {
                    shoal_types::placement::Operator::Equal(value) => {
                        Some((constraint.key.as_str(), value.as_str()))
                    }
                    _ => None,
                });
        let list: std::rc::Rc<[u32]> = match narrowed {
            Some((key, value)) => {
                let index = self.label_index(key);
                index
                    .get(value)
                    .map(|nodes| {
                        nodes
                            .iter()
                            .copied()
                            .filter(|at| {
                                fit::admits(self.nodes[*at as usize].node, service).is_ok()
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            }
            None => (0..self.nodes.len() as u32)
                .filter(|at| fit::admits(self.nodes[*at as usize].node, service).is_ok())
                .collect(),
        };
        self.admitting.insert(key, list.clone());
        list
    }

    fn place_replicas(&mut self, app: &'a str, version: u64, service: &'a ServiceSpec) {
        let sid = self.sid(app, service);
        let missing: Vec<u32> = (0..service.replicas)
            .filter(|slot| !self.filled.contains(&(sid, *slot)))
            .collect();
        if missing.is_empty() {
            return;
        }
        let admitting = self.admitting(service);
        let request = Request::of(service);
        let mut context = SpreadContext::new(self, app, service, &admitting);
        for (done, slot) in missing.iter().enumerate() {
            if self.plan.place.len() >= self.options.placements_max {
                return;
            }
            let chosen = self
                .choose(app, service, request, &admitting, &context)
                .or_else(|| self.preempt(service, request, &admitting, &context));
            match chosen {
                Some(at) => {
                    self.place(app, version, service, *slot, at, request);
                    context.placed(at);
                }
                None => {
                    let left = (missing.len() - done) as u32;
                    let reason = self.explain(service, request, &context);
                    self.plan.unplaced.push(Unplaced {
                        app: app.to_string(),
                        service: service.name.clone(),
                        count: left,
                        reason,
                    });
                    return;
                }
            }
        }
    }

    fn place_global(&mut self, app: &'a str, version: u64, service: &'a ServiceSpec) {
        let admitting = self.admitting(service);
        let request = Request::of(service);
        let key = self.sid(app, service);
        let mut next_slot = 0;
        let mut lacking_room = Vec::new();
        let mut limited: Vec<Reject> = Vec::new();
        let mut context = SpreadContext::new(self, app, service, &admitting);
        for &at in admitting.iter() {
            let has_one = self
                .per_node
                .get(&key)
                .is_some_and(|counts| counts.contains_key(&at));
            if has_one {
                continue;
            }
            if self.plan.place.len() >= self.options.placements_max {
                return;
            }
            if fit::fits(self.nodes[at as usize].node, self.used(at), request).is_err() {
                lacking_room.push(at);
                continue;
            }
            if let Err(reject) = fit::host_port_taken(&self.nodes[at as usize].host_ports, service)
            {
                limited.push(reject);
                continue;
            }
            // A global service's spread limits cap it below one per node.
            if let Some(reject) = context.refuses(at) {
                limited.push(reject);
                continue;
            }
            while self.filled.contains(&(key, next_slot)) {
                next_slot += 1;
            }
            self.place(app, version, service, next_slot, at, request);
            context.placed(at);
        }
        if let Some(first) = limited.first() {
            self.plan.unplaced.push(Unplaced {
                app: app.to_string(),
                service: service.name.clone(),
                count: limited.len() as u32,
                reason: format!("{} node(s) admit it but are {first}", limited.len()),
            });
        }
        if !lacking_room.is_empty() {
            let names: Vec<&str> = lacking_room
                .iter()
                .take(5)
                .map(|at| self.nodes[*at as usize].node.name.as_str())
                .collect();
            let more = lacking_room.len().saturating_sub(names.len());
            self.plan.unplaced.push(Unplaced {
                app: app.to_string(),
                service: service.name.clone(),
                count: lacking_room.len() as u32,
                reason: format!(
                    "{} node(s) admit it but lack room ({} cpu, {} memory asked): {}{}",
                    lacking_room.len(),
                    fit::format_cpu(request.cpu_millis),
                    fit::format_bytes(request.memory_bytes),
                    names.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                ),
            });
        }
    }

    fn used(&self, at: u32) -> Request {
        self.nodes[at as usize].used
    }

    fn place(
        &mut self,
        app: &'a str,
        version: u64,
        service: &'a ServiceSpec,
        slot: u32,
        at: u32,
        request: Request,
    ) {
        let sid = self.sid(app, service);
        let info = &mut self.nodes[at as usize];
        info.used.add(request);
        info.tasks += 1;
        info.host_ports.extend(fit::host_ports(service));
        self.most_tasks = self.most_tasks.max(info.tasks);
        self.filled.insert((sid, slot));
        *self.per_node.entry(sid).or_default().entry(at).or_default() += 1;
        self.plan.place.push(Placement {
            app: app.to_string(),
            service: service.name.clone(),
            slot,
            app_version: version,
            node: info.node.name.clone(),
        });
    }

    /// Why a node that admits the service cannot take one more task now.
    fn refuses(
        &self,
        at: u32,
        service: &ServiceSpec,
        request: Request,
        context: &SpreadContext<'a>,
    ) -> Option<Reject> {
        let info = &self.nodes[at as usize];
        if let Err(reject) = fit::fits_within(info.allocatable, info.used, request) {
            return Some(reject);
        }
        if let Err(reject) = fit::host_port_taken(&info.host_ports, service) {
            return Some(reject);
        }
        context.refuses(at)
    }

    /// The best node for one more task of `service`, if any has room.
    fn choose(
        &mut self,
        app: &'a str,
        service: &'a ServiceSpec,
        request: Request,
        admitting: &[u32],
        context: &SpreadContext<'a>,
    ) -> Option<u32> {
        if admitting.is_empty() {
            return None;
        }
        let wanted = if admitting.len() <= SCORE_ALL_NODES_MAX {
            admitting.len()
        } else {
            self.options.candidates.max(1)
        };
        let start = (self.rng.next() % admitting.len() as u64) as usize;
        let mut best: Option<(f64, u32)> = None;
        let mut found = 0;
        for step in 0..admitting.len() {
            let at = admitting[(start + step) % admitting.len()];
            if self.refuses(at, service, request, context).is_some() {
                continue;
            }
            let score = self.score(app, service, request, at, context);
            let better = match best {
                None => true,
                Some((best_score, best_at)) => {
                    score > best_score || (score == best_score && at < best_at)
                }
            };
            if better {
                best = Some((score, at));
            }
            found += 1;
            if found >= wanted {
                break;
            }
        }
        best.map(|(_, at)| at)
    }

    fn score(
        &self,
        app: &'a str,
        service: &'a ServiceSpec,
        request: Request,
        at: u32,
        context: &SpreadContext<'a>,
    ) -> f64 {
        let info = &self.nodes[at as usize];
        let node = info.node;
        let mut score = 0.0;
        let has_request = request != Request::default();
        if has_request {
            let used = self.used(at);
            let share = |used: u64, asked: u64, total: u64| {
                if total == 0 {
                    1.0
                } else {
                    (used.saturating_add(asked)) as f64 / total as f64
                }
            };
            let fullness = (share(
                used.cpu_millis,
                request.cpu_millis,
                info.allocatable.cpu_millis,
            ) + share(
                used.memory_bytes,
                request.memory_bytes,
                info.allocatable.memory_bytes,
            )) / 2.0;
            score += match service.placement.strategy {
                Strategy::Binpack => 10.0 * fullness,
                Strategy::Spread => 10.0 * (1.0 - fullness),
            };
        } else {
            // Tasks that ask for nothing are spread by count.
            score -= f64::from(info.tasks) / (1.0 + f64::from(self.most_tasks));
        }
        // Replicas of one service on one node fail together; bin-packing
        // accepts that (`spread` over `node.name` says otherwise).
        if !has_request || service.placement.strategy == Strategy::Spread {
            let same = self
                .per_node
                .get(&self.sid(app, service))
                .and_then(|counts| counts.get(&at))
                .copied()
                .unwrap_or(0);
            score -= 5.0 * f64::from(same);
        }
        for affinity in &service.placement.affinities {
            if affinity.expr.matches(node) {
                score += 10.0 * f64::from(affinity.weight) / 100.0;
            }
        }
        score -= context.spread_penalty(at);
        if info.soft_tainted
            && fit::untolerated(node, service, |effect| {
                effect == TaintEffect::PreferNoSchedule
            })
            .is_some()
        {
            score -= 50.0;
        }
        score
    }

    /// Makes room for a task by stopping tasks of lower priority on one node:
    /// the node where the highest priority displaced is lowest, then where
    /// fewest are displaced.
    fn preempt(
        &mut self,
        service: &'a ServiceSpec,
        request: Request,
        admitting: &[u32],
        context: &SpreadContext<'a>,
    ) -> Option<u32> {
        if service.priority == 0
            || request == Request::default()
            || self.preemptions >= self.options.preemptions_max
        {
            return None;
        }
        if self.victims.is_none() {
            let mut victims: Vec<Vec<Victim>> = (0..self.nodes.len()).map(|_| Vec::new()).collect();
            for task in self.state.tasks.values() {
                if task.desired != DesiredState::Running || self.stopped.contains(task.id.as_str())
                {
                    continue;
                }
                if let Some(at) = self.index.get(task.node.as_str()) {
                    victims[*at as usize].push(Victim {
                        task,
                        priority: task.spec.priority,
                        request: Request::of(&task.spec),
                    });
                }
            }
            for list in &mut victims {
                list.sort_by_key(|victim| {
                    (victim.priority, std::cmp::Reverse(victim.task.id.as_str()))
                });
            }
            self.victims = Some(victims);
        }
        let victims = self.victims.as_ref()?;
        let mut best: Option<((u32, usize), u32, Vec<&'a Task>)> = None;
        for &at in admitting {
            if context.refuses(at).is_some() {
                continue;
            }
            let info = &self.nodes[at as usize];
            // Preemption makes room, not ports.
            if fit::host_port_taken(&info.host_ports, service).is_err() {
                continue;
            }
            let mut used = info.used;
            let mut taken: Vec<&'a Task> = Vec::new();
            let mut highest = 0;
            for victim in &victims[at as usize] {
                if fit::fits(info.node, used, request).is_ok()
                    || victim.priority >= service.priority
                {
                    break;
                }
                if victim.request == Request::default()
                    || self.stopped.contains(victim.task.id.as_str())
                {
                    continue;
                }
                used.subtract(victim.request);
                highest = highest.max(victim.priority);
                taken.push(victim.task);
            }
            if taken.is_empty() || fit::fits(info.node, used, request).is_err() {
                continue;
            }
            let cost = (highest, taken.len());
            if best
                .as_ref()
                .is_none_or(|(best_cost, _, _)| cost < *best_cost)
            {
                best = Some((cost, at, taken));
            }
        }
        let (_, at, chosen) = best?;
        for task in chosen {
            self.unkeep(task);
            self.stop(task);
        }
        self.preemptions += 1;
        Some(at)
    }

    /// Says why no node takes the service, counting each node's first
    /// reason: "0 of 5 nodes fit: 3 not `zone == b`, 2 have less than
    /// 2 GiB memory free".
    fn explain(
        &self,
        service: &'a ServiceSpec,
        request: Request,
        context: &SpreadContext<'a>,
    ) -> String {
        if self.nodes.is_empty() {
            return "no node has joined the cluster".into();
        }
        let mut tally: BTreeMap<Reject, usize> = BTreeMap::new();
        for at in 0..self.nodes.len() as u32 {
            let reject = fit::admits(self.nodes[at as usize].node, service)
                .err()
                .or_else(|| self.refuses(at, service, request, context));
            if let Some(reject) = reject {
                *tally.entry(reject).or_default() += 1;
            }
        }
        let mut parts: Vec<(usize, String)> = tally
            .into_iter()
            .map(|(reject, count)| {
                let text = match &reject {
                    Reject::Cpu { .. } | Reject::Memory { .. } => format!(
                        "{count} {} {reject}",
                        if count == 1 { "has" } else { "have" }
                    ),
                    Reject::SpreadLimit { .. }
                    | Reject::AlreadyRunsOne
                    | Reject::HostPort { .. } => {
                        format!("{count} {} {reject}", if count == 1 { "is" } else { "are" })
                    }
                    Reject::Constraint(_) => format!("{count} {reject}"),
                    Reject::NotAlive | Reject::Draining | Reject::Tainted(_) => {
                        format!("{count} {} {reject}", if count == 1 { "is" } else { "are" })
                    }
                };
                (count, text)
            })
            .collect();
        parts.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut reason = format!(
            "0 of {} node{} can take it: ",
            self.nodes.len(),
            if self.nodes.len() == 1 { "" } else { "s" }
        );
        reason.push_str(
            &parts
                .into_iter()
                .map(|(_, text)| text)
                .collect::<Vec<_>>()
                .join(", "),
        );
        if service.priority > 0 && request != Request::default() {
            reason.push_str("; no lower-priority work to displace");
        }
        reason
    }
}

/// A service's spread over labels during one run: how many of its tasks
/// each label value holds, for the `max_per` rules and the evenness score.
struct SpreadContext<'a> {
    rules: Vec<SpreadRule<'a>>,
}

struct SpreadRule<'a> {
    over: &'a str,
    max_per: Option<u32>,
    /// The label's value id of every node, by node index.
    column: std::rc::Rc<Column<'a>>,
    /// Tasks per value id.
    counts: HashMap<u32, u32>,
    /// Values present among admitting nodes; even spread aims over these.
    values: usize,
    total: u32,
}

/// One label's values for every node, as ids into `values`; nodes without
/// the label share the id of "".
struct Column<'a> {
    ids: Vec<u32>,
    values: Vec<&'a str>,
}

impl<'a> SpreadContext<'a> {
    fn new(
        scheduler: &mut Scheduler<'a>,
        app: &'a str,
        service: &'a ServiceSpec,
        admitting: &[u32],
    ) -> Self {
        let mut rules = Vec::with_capacity(service.placement.spread.len());
        for spread in &service.placement.spread {
            let over = spread.over.as_str();
            let values = scheduler.distinct_values(service, over, admitting);
            let column = scheduler.column(over);
            let mut counts: HashMap<u32, u32> = HashMap::default();
            let mut total = 0;
            if let Some(own) = scheduler.per_node.get(&scheduler.sid(app, service)) {
                for (at, count) in own {
                    *counts.entry(column.ids[*at as usize]).or_default() += count;
                    total += count;
                }
            }
            rules.push(SpreadRule {
                over,
                max_per: spread.max_per,
                column,
                counts,
                values: values.max(1),
                total,
            });
        }
        SpreadContext { rules }
    }

    fn refuses(&self, at: u32) -> Option<Reject> {
        for rule in &self.rules {
            if let Some(max_per) = rule.max_per {
                let value = rule.column.ids[at as usize];
                if rule.counts.get(&value).copied().unwrap_or(0) >= max_per {
                    return Some(Reject::SpreadLimit {
                        over: rule.over.to_string(),
                        max_per,
                    });
                }
            }
        }
        None
    }

    /// How far above an even share the node's label values already are.
    fn spread_penalty(&self, at: u32) -> f64 {
        let mut penalty = 0.0;
        for rule in &self.rules {
            let value = rule.column.ids[at as usize];
            let count = f64::from(rule.counts.get(&value).copied().unwrap_or(0));
            let even = f64::from(rule.total) / rule.values as f64;
            penalty += 20.0 * (count - even).max(0.0) + 2.0 * count;
        }
        penalty
    }

    fn placed(&mut self, at: u32) {
        for rule in &mut self.rules {
            let value = rule.column.ids[at as usize];
            *rule.counts.entry(value).or_default() += 1;
            rule.total += 1;
        }
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

/// Whether a batch task has finished for good: it succeeded, or it failed
/// and will not run again.
pub fn batch_done(task: &Task) -> bool {
    let status = &task.status;
    match status.state {
        TaskState::Exited if status.exit_code == Some(0) => true,
        TaskState::Exited | TaskState::Failed => {
            task.spec.restart.policy() == RestartPolicy::Never
                || task
                    .spec
                    .restart
                    .attempts_max
                    .is_some_and(|most| status.attempt >= most)
        }
        _ => false,
    }
}

/// A small seeded generator (SplitMix64): the scheduler needs only
/// well-spread start points, and no clock or OS randomness.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests;
