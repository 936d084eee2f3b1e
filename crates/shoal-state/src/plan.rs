//! Applying a scheduler's plan: every part of it is checked again against
//! the state it lands on, as the plan was computed from an older snapshot.

use std::collections::BTreeMap;

use shoal_types::{DesiredState, Kind, Node, ServiceSpec, Task, TaskStatus};

use crate::fit::{self, Request};
use crate::{
    App, ApplyError, FastMap, Outcome, Placement, Plan, State, CHANGES_PER_PLAN_MAX,
    PLACEMENTS_PER_PLAN_MAX, UNPLACED_MAX,
};

impl State {
    /// Re-checks every part of a plan against this state: stops and
    /// removals first (they make room), then each placement must name the
    /// current app version, a free slot and a node that admits the task
    /// and has room for it, counting the placements before it.
    pub(crate) fn apply_plan(&mut self, plan: &Plan, now_ms: u64) -> Result<Outcome, ApplyError> {
        if plan.place.len() > PLACEMENTS_PER_PLAN_MAX {
            return Err(ApplyError::TooLarge(format!(
                "{} placements in one plan, limit {PLACEMENTS_PER_PLAN_MAX}",
                plan.place.len()
            )));
        }
        if plan.stop.len() > CHANGES_PER_PLAN_MAX
            || plan.remove.len() > CHANGES_PER_PLAN_MAX
            || plan.rollouts.len() > CHANGES_PER_PLAN_MAX
        {
            return Err(ApplyError::TooLarge(format!(
                "{} stops, {} removals and {} rollout steps in one plan, limit {CHANGES_PER_PLAN_MAX} each",
                plan.stop.len(),
                plan.remove.len(),
                plan.rollouts.len()
            )));
        }
        let mut rejected = Vec::new();
        let (mut stopped, mut removed) = (0, 0);
        for id in &plan.stop {
            match self.tasks.get_mut(id) {
                Some(task) => {
                    if task.desired != DesiredState::Stopped {
                        task.desired = DesiredState::Stopped;
                        stopped += 1;
                    }
                }
                None => rejected.push(format!("stop {id}: no such task")),
            }
        }
        for id in &plan.remove {
            match self.tasks.get(id) {
                Some(task)
                    if task.desired == DesiredState::Stopped
                        && task.status.state == shoal_types::TaskState::Stopped =>
                {
                    self.tasks.remove(id);
                    removed += 1;
                }
                Some(_) => rejected.push(format!("remove {id}: task has not stopped")),
                None => {}
            }
        }
        // A failed update's pause or rollback, before the placements: a
        // placement for the failed version no longer names the current one.
        for step in &plan.rollouts {
            match self.apps.get_mut(&step.app) {
                Some(app) => {
                    if !app.take_step(step, now_ms) {
                        rejected.push(format!(
                            "{:?} {} version {}: the app moved on or was marked already",
                            step.action, step.app, step.version
                        ));
                    }
                }
                None => rejected.push(format!("{:?} {}: app is gone", step.action, step.app)),
            }
        }
        let mut new_tasks = Vec::new();
        {
            let mut occupancy = Occupancy::build(&self.tasks, &self.nodes, &self.apps);
            let mut shared: FastMap<(&str, &str), std::sync::Arc<ServiceSpec>> = FastMap::default();
            for placement in &plan.place {
                match check_placement(&self.apps, &occupancy, placement) {
                    Ok((app, spec, node)) => {
                        occupancy.add(app, spec, node, placement.slot);
                        self.task_serial += 1;
                        let id = format!(
                            "{}.{}.{}.{}",
                            placement.app, placement.service, placement.slot, self.task_serial
                        );
                        new_tasks.push(Task {
                            id,
                            app: placement.app.clone(),
                            service: placement.service.clone(),
                            slot: placement.slot,
                            app_version: placement.app_version,
                            node: placement.node.clone(),
                            desired: DesiredState::Running,
                            spec: shared
                                .entry((app, spec.name.as_str()))
                                .or_insert_with(|| std::sync::Arc::new(spec.clone()))
                                .clone(),
                            created_at_ms: now_ms,
                            status: TaskStatus::pending(now_ms),
                            image: self
                                .apps
                                .get(app)
                                .and_then(|app| app.images.get(&spec.name))
                                .cloned(),
                        });
                    }
                    Err(reason) => rejected.push(reason),
                }
            }
        }
        let mut placed = Vec::with_capacity(new_tasks.len());
        for task in new_tasks {
            placed.push(task.id.clone());
            self.tasks.insert(task.id.clone(), task);
        }
        self.unplaced = plan.unplaced.iter().take(UNPLACED_MAX).cloned().collect();
        Ok(Outcome::PlanApplied {
            placed,
            stopped,
            removed,
            rejected,
        })
    }
}

/// What the desired-running tasks hold, indexed for checking placements.
/// Keys borrow the names from the state's maps of nodes and apps.
struct Occupancy<'a> {
    used: FastMap<&'a str, Request>,
    /// Desired-running tasks per slot of a current service, and whether
    /// one of them is of the app's current version.
    slots: FastMap<(&'a str, &'a str, u32), Slot>,
    /// Tasks per node of global services (at most one each).
    per_node: FastMap<(&'a str, &'a str), FastMap<&'a str, u32>>,
    /// Tasks per (service, index of a `max_per` spread, label value).
    per_value: FastMap<(&'a str, &'a str, usize, &'a str), u32>,
    /// The state's nodes by name, hashed.
    nodes: FastMap<&'a str, &'a Node>,
    /// Host ports published per node (only nodes that publish any).
    host_ports: FastMap<&'a str, Vec<fit::HostPort>>,
}

/// What a slot holds, for checking placements.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// Desired-running tasks.
    tasks: u32,
    /// Whether one of them is of the app's current version.
    current: bool,
}

/// An app's name and one of its services, when they still exist.
type Found<'a> = Option<(&'a str, &'a ServiceSpec, u64)>;

type PerNode<'a> = FastMap<(&'a str, &'a str), FastMap<&'a str, u32>>;
type PerValue<'a> = FastMap<(&'a str, &'a str, usize, &'a str), u32>;

/// Adds one task of `service` on `node` to the counts the rules need.
fn count_task<'a>(
    per_node: &mut PerNode<'a>,
    per_value: &mut PerValue<'a>,
    app: &'a str,
    service: &'a ServiceSpec,
    node: &'a Node,
) {
    if service.kind == Kind::Global {
        *per_node
            .entry((app, service.name.as_str()))
            .or_default()
            .entry(node.name.as_str())
            .or_default() += 1;
    }
    for (index, spread) in service.placement.spread.iter().enumerate() {
        if spread.max_per.is_some() {
            let value = fit::spread_value(node, &spread.over);
            *per_value
                .entry((app, service.name.as_str(), index, value))
                .or_default() += 1;
        }
    }
}

impl<'a> Occupancy<'a> {
    fn build(
        tasks: &BTreeMap<String, Task>,
        nodes: &'a BTreeMap<String, Node>,
        apps: &'a BTreeMap<String, App>,
    ) -> Self {
        let mut occupancy = Occupancy {
            used: FastMap::default(),
            slots: FastMap::default(),
            per_node: FastMap::default(),
            per_value: FastMap::default(),
            nodes: FastMap::default(),
            host_ports: FastMap::default(),
        };
        let mut last: Option<(&str, &str, Found<'a>)> = None;
        // Hashed: a BTreeMap lookup by name costs a dozen string compares.
        let by_name: FastMap<&'a str, &'a Node> = nodes
            .iter()
            .map(|(name, node)| (name.as_str(), node))
            .collect();
        for task in tasks.values() {
            if task.desired != DesiredState::Running {
                continue;
            }
            // Tasks of removed apps or services still hold their node's room
            // until they stop; only their slots no longer matter.
            let Some(&node) = by_name.get(task.node.as_str()) else {
                continue;
            };
            occupancy
                .used
                .entry(node.name.as_str())
                .or_default()
                .add(Request::of(&task.spec));
            if task.spec.ports.iter().any(|port| port.host_port.is_some()) {
                occupancy
                    .host_ports
                    .entry(node.name.as_str())
                    .or_default()
                    .extend(fit::host_ports(&task.spec));
            }
            // Tasks come in id order, so runs of them share a service.
            let found = match last {
                Some((app, service, found)) if app == task.app && service == task.service => found,
                _ => {
                    let found = apps.get_key_value(&task.app).and_then(|(name, app)| {
                        let service = app.spec.services.iter().find(|s| s.name == task.service)?;
                        Some((name.as_str(), service, app.version))
                    });
                    last = Some((task.app.as_str(), task.service.as_str(), found));
                    found
                }
            };
            let Some((app, service, version)) = found else {
                continue;
            };
            let slot = occupancy
                .slots
                .entry((app, service.name.as_str(), task.slot))
                .or_default();
            slot.tasks += 1;
            slot.current |= version == task.app_version;
            count_task(
                &mut occupancy.per_node,
                &mut occupancy.per_value,
                app,
                service,
                node,
            );
        }
        occupancy.nodes = by_name;
        occupancy
    }

    fn add(&mut self, app: &'a str, service: &'a ServiceSpec, node: &'a Node, slot: u32) {
        self.used
            .entry(node.name.as_str())
            .or_default()
            .add(Request::of(service));
        let slot = self
            .slots
            .entry((app, service.name.as_str(), slot))
            .or_default();
        slot.tasks += 1;
        slot.current = true;
        count_task(&mut self.per_node, &mut self.per_value, app, service, node);
        if service.ports.iter().any(|port| port.host_port.is_some()) {
            self.host_ports
                .entry(node.name.as_str())
                .or_default()
                .extend(fit::host_ports(service));
        }
    }
}

/// Slots a global service may number its tasks with.
pub const GLOBAL_SLOTS_MAX: u32 = 1_000_000;

type Checked<'a> = (&'a str, &'a ServiceSpec, &'a Node);

fn check_placement<'a>(
    apps: &'a BTreeMap<String, App>,
    occupancy: &Occupancy<'a>,
    placement: &Placement,
) -> Result<Checked<'a>, String> {
    // Only a refusal needs the words: no allocation on the way through.
    let what = || {
        format!(
            "place {}.{} slot {} on {}",
            placement.app, placement.service, placement.slot, placement.node
        )
    };
    let (app_name, app) = apps
        .get_key_value(&placement.app)
        .ok_or_else(|| format!("{}: app is gone", what()))?;
    if app.version != placement.app_version {
        return Err(format!(
            "{}: planned for version {} but the app is at version {}",
            what(),
            placement.app_version,
            app.version
        ));
    }
    let spec = app
        .spec
        .services
        .iter()
        .find(|service| service.name == placement.service)
        .ok_or_else(|| format!("{}: service is gone", what()))?;
    match spec.kind {
        Kind::Global if placement.slot >= GLOBAL_SLOTS_MAX => {
            return Err(format!("{}: slot beyond {GLOBAL_SLOTS_MAX}", what()))
        }
        Kind::Global => {}
        Kind::Service | Kind::Batch if placement.slot >= spec.replicas => {
            return Err(format!(
                "{}: the service has {} replicas",
                what(),
                spec.replicas
            ))
        }
        Kind::Service | Kind::Batch => {}
    }
    let node = *occupancy
        .nodes
        .get(placement.node.as_str())
        .ok_or_else(|| format!("{}: no such node", what()))?;
    fit::admits(node, spec).map_err(|reject| format!("{}: node is {reject}", what()))?;
    let key = (app_name.as_str(), spec.name.as_str());
    let slot = occupancy
        .slots
        .get(&(key.0, key.1, placement.slot))
        .copied()
        .unwrap_or_default();
    if placement.beside {
        // Beside the one older task of a slot, never a second new one.
        if slot.current || slot.tasks > 1 {
            return Err(format!(
                "{}: the slot already has a task of this version or two tasks",
                what()
            ));
        }
    } else if slot.tasks > 0 {
        return Err(format!("{}: the slot already has a task", what()));
    }
    let per_node = occupancy.per_node.get(&key);
    if spec.kind == Kind::Global
        && per_node.is_some_and(|counts| counts.get(node.name.as_str()).is_some_and(|n| *n > 0))
    {
        return Err(format!(
            "{}: node is {}",
            what(),
            fit::Reject::AlreadyRunsOne
        ));
    }
    if let Some(taken) = occupancy.host_ports.get(node.name.as_str()) {
        fit::host_port_taken(taken, spec)
            .map_err(|reject| format!("{}: node is {reject}", what()))?;
    }
    for (index, spread) in spec.placement.spread.iter().enumerate() {
        let Some(max_per) = spread.max_per else {
            continue;
        };
        let value = fit::spread_value(node, &spread.over);
        let count = occupancy
            .per_value
            .get(&(key.0, key.1, index, value))
            .copied()
            .unwrap_or(0);
        if count >= max_per {
            return Err(format!(
                "{}: node is {}",
                what(),
                fit::Reject::SpreadLimit {
                    over: spread.over.clone(),
                    max_per
                }
            ));
        }
    }
    let used = occupancy
        .used
        .get(node.name.as_str())
        .copied()
        .unwrap_or_default();
    fit::fits(node, used, Request::of(spec))
        .map_err(|reject| format!("{}: node has {reject}", what()))?;
    Ok((app_name.as_str(), spec, node))
}
