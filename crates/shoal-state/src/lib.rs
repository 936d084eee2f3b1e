//! The replicated state machine. Every change to cluster state is a
//! [`Command`] in an [`Entry`] of the log; [`State::apply`] is a deterministic
//! function of the state and the entry (the entry carries the proposer's
//! clock), so every replica that applies the same log holds the same state.
//!
//! - [`entry`]: the envelope every replica checks before decoding a command;
//! - [`command`]: the commands, their outcomes and errors;
//! - `apply`: one function per command;
//! - `plan`: a scheduler's plan, checked again as it is applied;
//! - [`fit`]: the rules a node must meet to take a task;
//! - [`rollout`]: how far an app's current version has rolled out;
//! - [`history`]: an app's versions before, and a failed update's pause or
//!   rollback;
//! - [`security`]: the CA, tokens, admitted and removed nodes, gossip keys.

mod apply;
mod ca;
pub mod command;
pub mod entry;
pub mod files;
pub mod fit;
pub mod history;
mod plan;
pub mod registries;
pub mod rollout;
pub mod security;
pub mod unplaced;

pub use command::*;
pub use entry::{format, Entry, Meta, RawCommand, LOG_VERSION, LOG_VERSION_FIRST, RELEASE};
pub use plan::GLOBAL_SLOTS_MAX;

/// Hash maps for the hot paths of scheduling and applying plans: foldhash
/// with a fixed seed is several times faster than SipHash on short string
/// keys and hashes the same in every process (nothing here may depend on
/// a random seed). Keys are names from the replicated state.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;
pub type FastSet<K> = HashSet<K, foldhash::fast::FixedState>;

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use shoal_types::{AppSpec, DesiredState, Node, PinnedImage, Task};

use fit::Request;
use shoal_types::subnet::Ipv4Cidr;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub spec: AppSpec,
    /// Service name → the image it runs, pinned when this version was
    /// applied (format 4; empty before).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, PinnedImage>,
    /// Starts at 1 and grows by one with every change of the spec.
    pub version: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// The versions before this one, the newest first, at most
    /// `history::HISTORY_MAX` (format 13; written only when there are any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<history::AppVersion>,
    /// What became of a rolling update that failed: paused, or rolled back
    /// (format 13; written only when there is one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<history::RolloutMark>,
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
    /// The newest log format among the entries applied, so the newest a
    /// snapshot of this state may hold; a node refuses a snapshot of a
    /// format it does not read. Absent (0) in snapshots of shoal 0.1.
    #[serde(default)]
    pub log_version: u32,
    /// The CA, tokens (as hashes), admitted and removed nodes, gossip keys.
    #[serde(default, skip_serializing_if = "security::Security::is_empty")]
    pub security: security::Security,
    /// Registry settings by host (format 4).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registries: BTreeMap<String, registries::RegistryRecord>,
    /// Secrets by name, their values sealed (format 8).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, files::FileRecord>,
    /// Configs by name (format 8).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, files::FileRecord>,
}

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the snapshot is of log format {found}, this node (shoal {RELEASE}) reads formats up to {LOG_VERSION}: upgrade this node to a release that reads it")]
    NeedsUpgrade { found: u32 },
    #[error("the snapshot is not a state: {0}")]
    Undecodable(#[from] serde_json::Error),
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
        self.subnet_holders = self.subnet_index();
    }

    /// The subnet index as it follows from `nodes`.
    fn subnet_index(&self) -> BTreeMap<u32, String> {
        self.nodes
            .values()
            .filter_map(|node| {
                let subnet = Ipv4Cidr::parse("subnet", node.subnet.as_deref()?).ok()?;
                Some((u32::from(subnet.network()), node.name.clone()))
            })
            .collect()
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut Node, ApplyError> {
        self.nodes
            .get_mut(name)
            .ok_or_else(|| ApplyError::NodeNotFound(name.to_string()))
    }

    /// The tasks placed on `node`, in id order.
    pub fn tasks_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks.values().filter(move |task| task.node == node)
    }

    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("state serializes: it holds only maps, strings and numbers")
    }

    /// Reads a snapshot: its format first, then (when this build reads
    /// that format) the state, strictly.
    pub fn restore(bytes: &[u8]) -> Result<State, RestoreError> {
        #[derive(Deserialize)]
        struct Format {
            #[serde(default)]
            log_version: u32,
        }
        let format: Format = serde_json::from_slice(bytes)?;
        if format.log_version > LOG_VERSION {
            return Err(RestoreError::NeedsUpgrade {
                found: format.log_version,
            });
        }
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
    ///
    /// What holds of the state alone: tasks on known nodes, one task per
    /// slot (two of two versions during a rolling update), serials from the counter, a host port published once per node,
    /// distinct node subnets, and derived indexes equal to a rebuild. (No
    /// over-commitment holds only while no node came back smaller: the
    /// simulator checks it once the scheduler settled.)
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut running_slots = BTreeMap::new();
        let mut published: BTreeMap<(&str, fit::HostPort), &str> = BTreeMap::new();
        for task in self.tasks.values() {
            if !self.nodes.contains_key(&task.node) {
                return Err(format!("task {} is on unknown node {}", task.id, task.node));
            }
            if task.desired == DesiredState::Running {
                // A rolling update starts a new task beside the old one:
                // two in a slot at most, of two versions (from format 13).
                let slot = (&task.app, &task.service, task.slot);
                let held: &mut Vec<&Task> = running_slots.entry(slot).or_default();
                if let Some(other) = held
                    .iter()
                    .find(|other| other.app_version == task.app_version)
                {
                    return Err(format!(
                        "tasks {} and {} hold the same slot at one version",
                        other.id, task.id
                    ));
                }
                let most = if self.log_version >= format::ROLLOUTS {
                    2
                } else {
                    1
                };
                if held.len() >= most {
                    let others: Vec<&str> = held.iter().map(|other| other.id.as_str()).collect();
                    return Err(format!(
                        "tasks {} and {} hold the same slot",
                        others.join(", "),
                        task.id
                    ));
                }
                held.push(task);
                for port in fit::host_ports(&task.spec) {
                    if let Some(other) = published.insert((task.node.as_str(), port), &task.id) {
                        return Err(format!(
                            "node {} publishes host port {}/{} for two tasks: {other} and {}",
                            task.node,
                            port.0,
                            port.1.as_str(),
                            task.id
                        ));
                    }
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
        let mut subnets: BTreeMap<&str, &str> = BTreeMap::new();
        for node in self.nodes.values() {
            if let Some(subnet) = node.subnet.as_deref() {
                if let Some(other) = subnets.insert(subnet, &node.name) {
                    return Err(format!(
                        "nodes {other} and {} hold the same subnet {subnet}",
                        node.name
                    ));
                }
            }
        }
        let rebuilt = self.subnet_index();
        if rebuilt != self.subnet_holders {
            return Err(format!(
                "the subnet index differs from a rebuild: {:?} against {rebuilt:?}",
                self.subnet_holders
            ));
        }
        Ok(())
    }
}
