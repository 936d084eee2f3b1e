//! The replicated state machine. Every change to cluster state is a
//! [`Command`] in an [`Entry`] of the log; [`State::apply`] is a deterministic
//! function of the state and the entry (the entry carries the proposer's
//! clock), so every replica that applies the same log holds the same state.
//! A single node applies its own log today; Raft orders the same entries
//! across voters in a cluster.

pub mod fit;

/// Hash maps for the hot paths of scheduling and applying plans: foldhash
/// with a fixed seed is several times faster than SipHash on short string
/// keys and hashes the same in every process (nothing here may depend on
/// a random seed). Keys are names from the replicated state.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;
pub type FastSet<K> = HashSet<K, foldhash::fast::FixedState>;

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use shoal_types::{
    AppSpec, DesiredState, Kind, Node, NodeStatus, ServiceSpec, Taint, TaintEffect, Task,
    TaskStatus,
};

use fit::Request;
use shoal_types::subnet::Ipv4Cidr;

/// Version of the [`Command`] encoding written into every entry. A node
/// refuses entries of a version it does not know instead of guessing.
pub const COMMAND_VERSION: u32 = 1;
/// Status reports accepted in one command.
pub const REPORTS_PER_COMMAND_MAX: usize = 4096;
/// Placements accepted in one plan.
pub const PLACEMENTS_PER_PLAN_MAX: usize = 100_000;
/// Stops or removals accepted in one plan.
pub const CHANGES_PER_PLAN_MAX: usize = 100_000;
/// Unplaced groups (app, service, reason) recorded from one plan.
pub const UNPLACED_MAX: usize = 10_000;

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
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster_cidr: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node_prefix_len: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dns_zone: Option<String>,
    },
    /// Forget a node that is not alive, with every task placed on it.
    ForgetNode {
        name: String,
    },
    /// Add a taint to a node, replacing one with the same key and effect.
    TaintNode {
        name: String,
        taint: Taint,
    },
    /// Remove a node's taints with this key (and effect, when given).
    UntaintNode {
        name: String,
        key: String,
        effect: Option<TaintEffect>,
    },
    /// Drain a node (no new work; its work moves away) or undo that.
    SetNodeDrain {
        name: String,
        drain: bool,
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
    /// Tasks that could not be placed, and why; recorded in the state as
    /// they are for users to see (replacing the previous list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unplaced: Vec<Unplaced>,
}

impl Plan {
    /// Whether applying the plan to `state` would change nothing.
    pub fn changes_nothing(&self, state: &State) -> bool {
        self.place.is_empty()
            && self.stop.is_empty()
            && self.remove.is_empty()
            && self.unplaced == state.unplaced
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

/// Tasks of one service that fit nowhere, for one reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    pub app: String,
    pub service: String,
    pub count: u32,
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
    NodeUpdated {
        changed: bool,
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
    /// What the last plan could not place, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unplaced: Vec<Unplaced>,
    /// Node subnets by network address, to find a free one without
    /// looking at every node. Derived from `nodes`: not in snapshots,
    /// rebuilt by [`State::restore`].
    #[serde(skip)]
    pub subnet_holders: BTreeMap<u32, String>,
}

/// Cluster-wide settings, changed through the log like everything else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Voters the cluster aims for: every node up to 2 nodes, then 3, then
    /// 5 from 5 nodes on, never more than this. Odd, 1 to 7.
    pub voters_max: u32,
    /// Where tasks' addresses come from: each node gets a subnet of this.
    #[serde(default = "default_cluster_cidr")]
    pub cluster_cidr: String,
    /// Prefix length of each node's subnet (24: 254 addresses a node).
    #[serde(default = "default_node_prefix_len")]
    pub node_prefix_len: u8,
    /// The DNS zone of service names: `SERVICE.APP.ZONE`.
    #[serde(default = "default_dns_zone")]
    pub dns_zone: String,
}

fn default_dns_zone() -> String {
    DNS_ZONE_DEFAULT.to_string()
}

/// The DNS zone when none is set.
pub const DNS_ZONE_DEFAULT: &str = "shoal";
/// Longest DNS zone name: room is left for `_port._proto.service.app.`.
pub const DNS_ZONE_CHARS_MAX: usize = 100;

/// Checks a DNS zone name: DNS labels joined by `.`, e.g. `shoal` or
/// `cluster.internal`.
pub fn check_dns_zone(zone: &str) -> Result<(), String> {
    if zone.is_empty() || zone.len() > DNS_ZONE_CHARS_MAX {
        return Err(format!(
            "dns_zone: `{zone}` must be 1 to {DNS_ZONE_CHARS_MAX} characters, e.g. `shoal` or `cluster.internal`"
        ));
    }
    for label in zone.split('.') {
        shoal_types::check_dns_label(label).map_err(|message| format!("dns_zone: {message}"))?;
    }
    Ok(())
}

fn default_cluster_cidr() -> String {
    shoal_types::subnet::CLUSTER_CIDR_DEFAULT.to_string()
}

fn default_node_prefix_len() -> u8 {
    shoal_types::subnet::NODE_PREFIX_LEN_DEFAULT
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            voters_max: 5,
            cluster_cidr: default_cluster_cidr(),
            node_prefix_len: default_node_prefix_len(),
            dns_zone: default_dns_zone(),
        }
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
                let mut node = node.clone();
                // Taints and drain belong to operators, the subnet to the
                // cluster: never to the node.
                if let Some(known) = self.nodes.get(&node.name) {
                    node.taints.clone_from(&known.taints);
                    node.drain = known.drain;
                    node.subnet.clone_from(&known.subnet);
                } else {
                    node.taints.clear();
                    node.drain = false;
                    node.subnet = None;
                }
                if node.subnet.is_none() {
                    if let Some(subnet) = self.free_subnet() {
                        node.subnet = Some(subnet.to_string());
                        self.subnet_holders
                            .insert(u32::from(subnet.network()), node.name.clone());
                    }
                }
                self.nodes.insert(node.name.clone(), node);
                Ok(Outcome::NodeRegistered)
            }
            Command::TaintNode { name, taint } => {
                let node = self.node_mut(name)?;
                if node.taints.len() >= shoal_types::placement::TAINTS_MAX
                    && !node
                        .taints
                        .iter()
                        .any(|t| t.key == taint.key && t.effect == taint.effect)
                {
                    return Err(ApplyError::TooLarge(format!(
                        "node `{name}` has {} taints, the limit; remove one first",
                        node.taints.len()
                    )));
                }
                let before = node.taints.clone();
                node.taints
                    .retain(|t| !(t.key == taint.key && t.effect == taint.effect));
                node.taints.push(taint.clone());
                node.taints.sort();
                Ok(Outcome::NodeUpdated {
                    changed: node.taints != before,
                })
            }
            Command::UntaintNode { name, key, effect } => {
                let node = self.node_mut(name)?;
                let before = node.taints.len();
                node.taints
                    .retain(|t| !(&t.key == key && effect.is_none_or(|effect| effect == t.effect)));
                Ok(Outcome::NodeUpdated {
                    changed: node.taints.len() != before,
                })
            }
            Command::SetNodeDrain { name, drain } => {
                let node = self.node_mut(name)?;
                let changed = node.drain != *drain;
                node.drain = *drain;
                Ok(Outcome::NodeUpdated { changed })
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
            Command::SetSettings {
                voters_max,
                cluster_cidr,
                node_prefix_len,
                dns_zone,
            } => {
                // Every setting is checked before any is changed.
                if let Some(voters) = voters_max {
                    if !(1..=7).contains(voters) || voters % 2 == 0 {
                        return Err(ApplyError::InvalidSetting(format!(
                            "voters_max: must be 1, 3, 5 or 7 (an odd count keeps a majority), got {voters}"
                        )));
                    }
                }
                if let Some(zone) = dns_zone {
                    check_dns_zone(zone).map_err(ApplyError::InvalidSetting)?;
                }
                if cluster_cidr.is_some() || node_prefix_len.is_some() {
                    let cidr = cluster_cidr
                        .as_deref()
                        .unwrap_or(&self.settings.cluster_cidr);
                    let prefix = node_prefix_len.unwrap_or(self.settings.node_prefix_len);
                    let cluster = Ipv4Cidr::parse("cluster_cidr", cidr)
                        .map_err(|error| ApplyError::InvalidSetting(error.to_string()))?;
                    shoal_types::subnet::next_free_subnet(cluster, prefix, &Default::default())
                        .map_err(|error| {
                            ApplyError::InvalidSetting(format!("node_prefix_len: {error}"))
                        })?;
                    let changes = cluster.to_string() != self.settings.cluster_cidr
                        || prefix != self.settings.node_prefix_len;
                    if changes {
                        if let Some(node) = self.nodes.values().find(|n| n.subnet.is_some()) {
                            return Err(ApplyError::InvalidSetting(format!(
                                "cluster_cidr: node `{}` already holds subnet {} of {}; the cluster CIDR and node prefix can only change before nodes hold subnets",
                                node.name,
                                node.subnet.as_deref().unwrap_or(""),
                                self.settings.cluster_cidr
                            )));
                        }
                    }
                    self.settings.cluster_cidr = cluster.to_string();
                    self.settings.node_prefix_len = prefix;
                }
                if let Some(voters) = voters_max {
                    self.settings.voters_max = *voters;
                }
                if let Some(zone) = dns_zone {
                    self.settings.dns_zone = zone.clone();
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
                if let Some(subnet) = self
                    .nodes
                    .remove(name)
                    .and_then(|node| node.subnet)
                    .and_then(|subnet| Ipv4Cidr::parse("subnet", &subnet).ok())
                {
                    self.subnet_holders.remove(&u32::from(subnet.network()));
                }
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

    /// The next node subnet no node holds, if the cluster CIDR has one.
    fn free_subnet(&self) -> Option<Ipv4Cidr> {
        let cluster = Ipv4Cidr::parse("cluster_cidr", &self.settings.cluster_cidr).ok()?;
        let prefix = self.settings.node_prefix_len;
        let size = 1u64 << (32 - u32::from(prefix.min(32)));
        let start = u64::from(u32::from(cluster.network()));
        let end = u64::from(u32::from(cluster.last())) + 1;
        // Usually the block after the highest one held is free: O(log n).
        let after_highest = self
            .subnet_holders
            .range(u32::from(cluster.network())..=u32::from(cluster.last()))
            .next_back()
            .map_or(start, |(network, _)| u64::from(*network) + size);
        if after_highest + size <= end && prefix >= cluster.prefix_len() && prefix <= 30 {
            let subnet =
                Ipv4Cidr::containing(std::net::Ipv4Addr::from(after_highest as u32), prefix);
            return Some(subnet);
        }
        // Else look for a hole left by a forgotten node, if there can be one.
        let capacity = end.saturating_sub(start) / size;
        if self.subnet_holders.len() as u64 >= capacity {
            return None;
        }
        let taken: std::collections::BTreeSet<Ipv4Cidr> = self
            .subnet_holders
            .keys()
            .map(|network| Ipv4Cidr::containing(std::net::Ipv4Addr::from(*network), prefix))
            .collect();
        shoal_types::subnet::next_free_subnet(cluster, prefix, &taken).ok()
    }

    /// Rebuilds what is derived from the rest of the state.
    fn reindex(&mut self) {
        self.subnet_holders = self
            .nodes
            .values()
            .filter_map(|node| {
                let subnet = Ipv4Cidr::parse("subnet", node.subnet.as_deref()?).ok()?;
                Some((u32::from(subnet.network()), node.name.clone()))
            })
            .collect();
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut Node, ApplyError> {
        self.nodes
            .get_mut(name)
            .ok_or_else(|| ApplyError::NodeNotFound(name.to_string()))
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

    /// Re-checks every part of a plan against this state: stops and
    /// removals first (they make room), then each placement must name the
    /// current app version, a free slot and a node that admits the task
    /// and has room for it, counting the placements before it.
    fn apply_plan(&mut self, plan: &Plan, now_ms: u64) -> Result<Outcome, ApplyError> {
        if plan.place.len() > PLACEMENTS_PER_PLAN_MAX {
            return Err(ApplyError::TooLarge(format!(
                "{} placements in one plan, limit {PLACEMENTS_PER_PLAN_MAX}",
                plan.place.len()
            )));
        }
        if plan.stop.len() > CHANGES_PER_PLAN_MAX || plan.remove.len() > CHANGES_PER_PLAN_MAX {
            return Err(ApplyError::TooLarge(format!(
                "{} stops and {} removals in one plan, limit {CHANGES_PER_PLAN_MAX} each",
                plan.stop.len(),
                plan.remove.len()
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

    /// The tasks placed on `node`, in id order.
    pub fn tasks_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks.values().filter(move |task| task.node == node)
    }

    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("state serializes: it holds only maps, strings and numbers")
    }

    pub fn restore(bytes: &[u8]) -> Result<State, serde_json::Error> {
        let mut state: State = serde_json::from_slice(bytes)?;
        state.reindex();
        Ok(state)
    }

    /// Nodes whose tasks request more than they have to give, with what
    /// they request. Empty unless a node re-registered with less room.
    pub fn overcommitted_nodes(&self) -> Vec<(String, Request)> {
        let tasks: Vec<&Task> = self.tasks.values().collect();
        let usage = fit::usage_by_node(&tasks);
        let mut over: Vec<(String, Request)> = usage
            .into_iter()
            .filter(|(name, used)| {
                self.nodes.get(name).is_some_and(|node| {
                    used.cpu_millis > node.cpu_allocatable_millis
                        || used.memory_bytes > node.memory_allocatable_bytes
                })
            })
            .collect();
        over.sort_by(|a, b| a.0.cmp(&b.0));
        over
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

/// What the desired-running tasks hold, indexed for checking placements.
/// Keys borrow the names from the state's maps of nodes and apps.
struct Occupancy<'a> {
    used: FastMap<&'a str, Request>,
    slots: FastSet<(&'a str, &'a str, u32)>,
    /// Tasks per node of global services (at most one each).
    per_node: FastMap<(&'a str, &'a str), FastMap<&'a str, u32>>,
    /// Tasks per (service, index of a `max_per` spread, label value).
    per_value: FastMap<(&'a str, &'a str, usize, &'a str), u32>,
    /// The state's nodes by name, hashed.
    nodes: FastMap<&'a str, &'a Node>,
    /// Host ports published per node (only nodes that publish any).
    host_ports: FastMap<&'a str, Vec<fit::HostPort>>,
}

/// An app's name and one of its services, when they still exist.
type Found<'a> = Option<(&'a str, &'a ServiceSpec)>;

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
            slots: FastSet::default(),
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
                        Some((name.as_str(), service))
                    });
                    last = Some((task.app.as_str(), task.service.as_str(), found));
                    found
                }
            };
            let Some((app, service)) = found else {
                continue;
            };
            occupancy
                .slots
                .insert((app, service.name.as_str(), task.slot));
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
        self.slots.insert((app, service.name.as_str(), slot));
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
    if occupancy.slots.contains(&(key.0, key.1, placement.slot)) {
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
