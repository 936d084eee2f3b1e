//! The replicated state machine. Every change to cluster state is a
//! [`Command`] in an [`Entry`] of the log; [`State::apply`] is a deterministic
//! function of the state and the entry (the entry carries the proposer's
//! clock), so every replica that applies the same log holds the same state.
//! A single node applies its own log today; Raft orders the same entries
//! across voters in a cluster.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_types::{AppSpec, DesiredState, Node, NodeStatus, Task, TaskStatus};

/// Version of the [`Command`] encoding written into every entry. A node
/// refuses entries of a version it does not know instead of guessing.
pub const COMMAND_VERSION: u32 = 1;
/// Status reports accepted in one command.
pub const REPORTS_PER_COMMAND_MAX: usize = 4096;
/// Placements accepted in one plan.
pub const PLACEMENTS_PER_PLAN_MAX: usize = 100_000;

/// One log entry: a command stamped by its proposer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub version: u32,
    /// The proposer's wall clock; `apply` uses it instead of reading a clock.
    pub at_ms: u64,
    pub command: Command,
}

impl Entry {
    pub fn new(at_ms: u64, command: Command) -> Self {
        Entry {
            version: COMMAND_VERSION,
            at_ms,
            command,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// A node announces itself (or its new facts).
    RegisterNode {
        node: Node,
    },
    /// Create or update an app; a spec equal to the current one is a no-op.
    PutApp {
        spec: AppSpec,
    },
    RemoveApp {
        name: String,
    },
    /// A scheduler's decision, re-checked against the state it lands on.
    ApplyPlan {
        plan: Plan,
    },
    /// The cluster's verdict on a node's liveness (from gossip, by the
    /// leader): tasks on a node that is not alive are placed again elsewhere.
    SetNodeStatus {
        name: String,
        status: NodeStatus,
    },
    /// Change cluster-wide settings; fields left out keep their value.
    SetSettings {
        voters_max: Option<u32>,
    },
    /// Forget a node that is not alive, with every task placed on it.
    ForgetNode {
        name: String,
    },
    /// A node reports what became of the tasks placed on it.
    ReportTasks {
        node: String,
        statuses: Vec<(String, TaskStatus)>,
    },
}

/// What a scheduler wants changed. Computed from a snapshot, so anything in
/// it may be stale by the time it is applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub place: Vec<Placement>,
    /// Tasks to move to desired `stopped`.
    pub stop: Vec<String>,
    /// Stopped tasks to forget.
    pub remove: Vec<String>,
    /// Replicas that could not be placed, and why (not applied, shown to users).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unplaced: Vec<Unplaced>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.place.is_empty() && self.stop.is_empty() && self.remove.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub app: String,
    pub service: String,
    pub slot: u32,
    pub app_version: u64,
    pub node: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    pub app: String,
    pub service: String,
    pub slot: u32,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub spec: AppSpec,
    /// Starts at 1 and grows by one with every change of the spec.
    pub version: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// What applying an entry did, returned to whoever proposed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    NodeRegistered,
    NodeStatusSet {
        changed: bool,
    },
    SettingsSet,
    NodeForgotten {
        tasks: usize,
    },
    AppPut {
        version: u64,
        changed: bool,
    },
    AppRemoved,
    PlanApplied {
        placed: Vec<String>,
        stopped: usize,
        removed: usize,
        /// Parts of the plan that no longer fit the state, with the reason.
        rejected: Vec<String>,
    },
    TasksReported {
        accepted: usize,
        stale: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ApplyError {
    #[error("entry version {0} is newer than this node understands ({COMMAND_VERSION}); upgrade shoal on this node")]
    UnknownVersion(u32),
    #[error("app `{0}` not found")]
    AppNotFound(String),
    #[error("node `{0}` not found")]
    NodeNotFound(String),
    #[error("{0}")]
    InvalidSetting(String),
    #[error("node `{0}` is alive; only a node that is not can be forgotten")]
    NodeAlive(String),
    #[error("{0}")]
    TooLarge(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Index of the last applied entry.
    pub applied_index: u64,
    pub apps: BTreeMap<String, App>,
    pub tasks: BTreeMap<String, Task>,
    pub nodes: BTreeMap<String, Node>,
    /// Source of task id serials; only grows.
    pub task_serial: u64,
    #[serde(default)]
    pub settings: Settings,
}

/// Cluster-wide settings, changed through the log like everything else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Voters the cluster aims for: every node up to 2 nodes, then 3, then
    /// 5 from 5 nodes on, never more than this. Odd, 1 to 7.
    pub voters_max: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { voters_max: 5 }
    }
}

impl State {
    /// Applies one entry at log position `index`. An error leaves the state
    /// unchanged apart from `applied_index`.
    pub fn apply(&mut self, index: u64, entry: &Entry) -> Result<Outcome, ApplyError> {
        assert!(
            index > self.applied_index,
            "entry {index} applied after {}: the log went backwards",
            self.applied_index
        );
        self.applied_index = index;
        if entry.version > COMMAND_VERSION {
            return Err(ApplyError::UnknownVersion(entry.version));
        }
        let now_ms = entry.at_ms;
        match &entry.command {
            Command::RegisterNode { node } => {
                self.nodes.insert(node.name.clone(), node.clone());
                Ok(Outcome::NodeRegistered)
            }
            Command::SetNodeStatus { name, status } => {
                let node = self
                    .nodes
                    .get_mut(name)
                    .ok_or_else(|| ApplyError::NodeNotFound(name.clone()))?;
                let changed = node.status != *status;
                node.status = *status;
                Ok(Outcome::NodeStatusSet { changed })
            }
            Command::SetSettings { voters_max } => {
                if let Some(voters) = voters_max {
                    if !(1..=7).contains(voters) || voters % 2 == 0 {
                        return Err(ApplyError::InvalidSetting(format!(
                            "voters_max: must be 1, 3, 5 or 7 (an odd count keeps a majority), got {voters}"
                        )));
                    }
                    self.settings.voters_max = *voters;
                }
                Ok(Outcome::SettingsSet)
            }
            Command::ForgetNode { name } => {
                match self.nodes.get(name) {
                    None => return Err(ApplyError::NodeNotFound(name.clone())),
                    Some(node) if node.status == NodeStatus::Alive => {
                        return Err(ApplyError::NodeAlive(name.clone()))
                    }
                    Some(_) => {}
                }
                self.nodes.remove(name);
                let before = self.tasks.len();
                self.tasks.retain(|_, task| &task.node != name);
                Ok(Outcome::NodeForgotten {
                    tasks: before - self.tasks.len(),
                })
            }
            Command::PutApp { spec } => Ok(self.put_app(spec, now_ms)),
            Command::RemoveApp { name } => {
                self.apps
                    .remove(name)
                    .ok_or_else(|| ApplyError::AppNotFound(name.clone()))?;
                Ok(Outcome::AppRemoved)
            }
            Command::ApplyPlan { plan } => self.apply_plan(plan, now_ms),
            Command::ReportTasks { node, statuses } => {
                if statuses.len() > REPORTS_PER_COMMAND_MAX {
                    return Err(ApplyError::TooLarge(format!(
                        "{} reports in one command, limit {REPORTS_PER_COMMAND_MAX}",
                        statuses.len()
                    )));
                }
                let (mut accepted, mut stale) = (0, 0);
                for (id, status) in statuses {
                    match self.tasks.get_mut(id) {
                        Some(task) if &task.node == node && status.may_follow(&task.status) => {
                            task.status = status.clone();
                            accepted += 1;
                        }
                        _ => stale += 1,
                    }
                }
                Ok(Outcome::TasksReported { accepted, stale })
            }
        }
    }

    fn put_app(&mut self, spec: &AppSpec, now_ms: u64) -> Outcome {
        match self.apps.get_mut(&spec.name) {
            Some(app) if &app.spec == spec => Outcome::AppPut {
                version: app.version,
                changed: false,
            },
            Some(app) => {
                app.spec = spec.clone();
                app.version += 1;
                app.updated_at_ms = now_ms;
                Outcome::AppPut {
                    version: app.version,
                    changed: true,
                }
            }
            None => {
                self.apps.insert(
                    spec.name.clone(),
                    App {
                        spec: spec.clone(),
                        version: 1,
                        created_at_ms: now_ms,
                        updated_at_ms: now_ms,
                    },
                );
                Outcome::AppPut {
                    version: 1,
                    changed: true,
                }
            }
        }
    }

    /// Re-checks every part of a plan against this state: placements must
    /// name a live node and the current app version, and fill a slot that has
    /// no running task of that version yet.
    fn apply_plan(&mut self, plan: &Plan, now_ms: u64) -> Result<Outcome, ApplyError> {
        if plan.place.len() > PLACEMENTS_PER_PLAN_MAX {
            return Err(ApplyError::TooLarge(format!(
                "{} placements in one plan, limit {PLACEMENTS_PER_PLAN_MAX}",
                plan.place.len()
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
        let mut placed = Vec::new();
        for placement in &plan.place {
            match self.check_placement(placement) {
                Ok(spec) => {
                    self.task_serial += 1;
                    let id = format!(
                        "{}.{}.{}.{}",
                        placement.app, placement.service, placement.slot, self.task_serial
                    );
                    let task = Task {
                        id: id.clone(),
                        app: placement.app.clone(),
                        service: placement.service.clone(),
                        slot: placement.slot,
                        app_version: placement.app_version,
                        node: placement.node.clone(),
                        desired: DesiredState::Running,
                        spec,
                        created_at_ms: now_ms,
                        status: TaskStatus::pending(now_ms),
                    };
                    self.tasks.insert(id.clone(), task);
                    placed.push(id);
                }
                Err(reason) => rejected.push(reason),
            }
        }
        Ok(Outcome::PlanApplied {
            placed,
            stopped,
            removed,
            rejected,
        })
    }

    fn check_placement(&self, placement: &Placement) -> Result<shoal_types::ServiceSpec, String> {
        let what = format!(
            "place {}.{} slot {} on {}",
            placement.app, placement.service, placement.slot, placement.node
        );
        let app = self
            .apps
            .get(&placement.app)
            .ok_or_else(|| format!("{what}: app is gone"))?;
        if app.version != placement.app_version {
            return Err(format!(
                "{what}: planned for version {} but the app is at version {}",
                placement.app_version, app.version
            ));
        }
        let spec = app
            .spec
            .services
            .iter()
            .find(|service| service.name == placement.service)
            .ok_or_else(|| format!("{what}: service is gone"))?;
        if placement.slot >= spec.replicas {
            return Err(format!(
                "{what}: the service has {} replicas",
                spec.replicas
            ));
        }
        match self.nodes.get(&placement.node) {
            Some(node) if node.status == NodeStatus::Alive => {}
            Some(node) => return Err(format!("{what}: node is {}", node.status.as_str())),
            None => return Err(format!("{what}: no such node")),
        }
        let taken = self.tasks.values().any(|task| {
            task.app == placement.app
                && task.service == placement.service
                && task.slot == placement.slot
                && task.desired == DesiredState::Running
        });
        if taken {
            return Err(format!("{what}: the slot already has a task"));
        }
        Ok(spec.clone())
    }

    /// The tasks placed on `node`, in id order.
    pub fn tasks_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks.values().filter(move |task| task.node == node)
    }

    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("state serializes: it holds only maps, strings and numbers")
    }

    pub fn restore(bytes: &[u8]) -> Result<State, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Checks what must hold after every apply; the simulator and tests call
    /// it after each step.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut running_slots = BTreeMap::new();
        for task in self.tasks.values() {
            if !self.nodes.contains_key(&task.node) {
                return Err(format!("task {} is on unknown node {}", task.id, task.node));
            }
            if task.desired == DesiredState::Running {
                let slot = (&task.app, &task.service, task.slot);
                if let Some(other) = running_slots.insert(slot, &task.id) {
                    return Err(format!("tasks {other} and {} hold the same slot", task.id));
                }
            }
            let serial: u64 = task
                .id
                .rsplit('.')
                .next()
                .and_then(|serial| serial.parse().ok())
                .ok_or_else(|| format!("task id {} has no serial", task.id))?;
            if serial > self.task_serial {
                return Err(format!("task {} is newer than the serial counter", task.id));
            }
        }
        Ok(())
    }
}
