//! Nodes as the replicated state records them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::placement::{
    Labels, Taint, TaintEffect, LABEL_NODE_ARCH, LABEL_NODE_NAME, LABEL_NODE_OS,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    /// Address of the node's API, `host:port`.
    pub addr: String,
    /// Operating system and kernel, e.g. `Linux 6.1.0`.
    pub os: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_total_bytes: u64,
    /// What tasks may request in all: the node's cpus and memory less the
    /// reserve its operator keeps for the system (`--reserve-cpu`,
    /// `--reserve-memory`).
    #[serde(default)]
    pub cpu_allocatable_millis: u64,
    #[serde(default)]
    pub memory_allocatable_bytes: u64,
    /// Set by the node (`--label`); see [`Labels`] for the built-in ones.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub started_at_ms: u64,
    pub status: NodeStatus,
    /// Set by operators (`shoal node taint`); kept when the node registers again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// Set by operators (`shoal node drain`): no new work, and running work
    /// moves away. Kept when the node registers again.
    #[serde(default)]
    pub drain: bool,
    /// The node's share of the cluster CIDR for its tasks' addresses,
    /// chosen by the state machine when the node first registers and held
    /// until the node is forgotten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// What the node's operator lets its tasks do beyond the hardened
    /// defaults (`--allow-privileged`, `--allow-host-network`). Set by the
    /// node; written only when it allows something (shoal 0.6, log format 6).
    #[serde(default, skip_serializing_if = "Allows::is_none")]
    pub allows: Allows,
}

/// What a node's operator lets its tasks do beyond the hardened defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Allows {
    /// `--allow-privileged`: privileged tasks, the node's PID namespace,
    /// capabilities beyond the default set.
    #[serde(default, skip_serializing_if = "is_false")]
    pub privileged: bool,
    /// `--allow-host-network`: tasks on the node's own network.
    #[serde(default, skip_serializing_if = "is_false")]
    pub host_network: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl Allows {
    pub fn is_none(&self) -> bool {
        *self == Allows::default()
    }

    /// What a node lacks to run a task that needs `needs`, if anything.
    pub fn lacks(&self, needs: crate::Needs) -> Option<Allowance> {
        if needs.privileged && !self.privileged {
            Some(Allowance::Privileged)
        } else if needs.host_network && !self.host_network {
            Some(Allowance::HostNetwork)
        } else {
            None
        }
    }
}

/// One thing a node's operator may allow its tasks.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Allowance {
    /// Privileged tasks, the node's PID namespace, added capabilities.
    Privileged,
    /// Tasks on the node's own network.
    HostNetwork,
}

impl Allowance {
    /// The agent's flag that allows it.
    pub fn flag(self) -> &'static str {
        match self {
            Allowance::Privileged => "--allow-privileged",
            Allowance::HostNetwork => "--allow-host-network",
        }
    }

    /// What it allows, in words.
    pub fn what(self) -> &'static str {
        match self {
            Allowance::Privileged => "privileged tasks",
            Allowance::HostNetwork => "tasks on the node's network",
        }
    }
}

impl Node {
    /// An alive Linux node with 2 cpus and 1 GiB, nothing reserved, no
    /// labels: the node tests and the simulator start from.
    pub fn sample(name: &str, addr: &str) -> Node {
        Node {
            name: name.into(),
            addr: addr.into(),
            os: "Linux".into(),
            arch: "x86_64".into(),
            cpus: 2,
            memory_total_bytes: 1 << 30,
            cpu_allocatable_millis: 2000,
            memory_allocatable_bytes: 1 << 30,
            labels: Default::default(),
            started_at_ms: 0,
            status: NodeStatus::Alive,
            taints: Vec::new(),
            drain: false,
            subnet: None,
            allows: Allows::default(),
        }
    }

    /// The operating system as the `node.os` label has it: `linux`.
    pub fn os_name(&self) -> &str {
        self.os.split_whitespace().next().unwrap_or("")
    }

    /// Whether new work may be placed here at all (alive and not drained).
    pub fn schedulable(&self) -> bool {
        self.status == NodeStatus::Alive && !self.drain
    }

    pub fn has_taint_effect(&self, effect: TaintEffect) -> bool {
        self.taints.iter().any(|taint| taint.effect == effect)
    }
}

impl Labels for Node {
    fn label(&self, key: &str) -> Option<&str> {
        // Most keys are the node's own labels: skip the built-ins cheaply.
        if !key.starts_with("node.") {
            return self.labels.get(key).map(String::as_str);
        }
        match key {
            LABEL_NODE_NAME => Some(&self.name),
            LABEL_NODE_ARCH => Some(&self.arch),
            LABEL_NODE_OS => Some(self.os_name()),
            _ => self.labels.get(key).map(String::as_str),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Alive,
    Suspect,
    Dead,
    Left,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Alive => "alive",
            NodeStatus::Suspect => "suspect",
            NodeStatus::Dead => "dead",
            NodeStatus::Left => "left",
        }
    }
}

/// How long a node that is dead or gone stays listed before it is
/// forgotten with its tasks, unless told otherwise (`--forget-dead-after`):
/// long enough for a reboot, short enough that its tasks do not wait on it
/// for long. Gossip forgets its member, and the leader the node, after it.
pub const FORGET_DEAD_AFTER_DEFAULT_MS: u64 = 5 * 60 * 1000;

/// A node's rank for `key` (rendezvous hashing): FNV-1a over both,
/// finished by SplitMix64's mixer so that close names spread. Every node
/// ranks the same from the same names, and a node joining or leaving moves
/// only the keys it ranks first for.
pub fn rendezvous_rank(key: &str, node: &str) -> u64 {
    crate::stable::mix64(crate::stable::fnv1a64(
        key.bytes().chain([0]).chain(node.bytes()),
    ))
}

/// The node's id in the cluster's consensus, derived from its unique name
/// (64-bit FNV-1a), so that every node computes the same id for a name.
pub fn consensus_id(name: &str) -> u64 {
    crate::stable::fnv1a64(name.bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn consensus_ids_are_stable_and_distinct() {
        assert_eq!(super::consensus_id(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::consensus_id("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(super::consensus_id("n1"), super::consensus_id("n2"));
    }

    /// Ranks are stored nowhere but every node must compute the same, in
    /// every release (a standby moves when its rank changes): pinned.
    #[test]
    fn rendezvous_ranks_are_stable() {
        assert_eq!(
            super::rendezvous_rank("web/api", "n1"),
            0xbe8c_6ebf_5057_7349
        );
        assert_ne!(
            super::rendezvous_rank("web/api", "n1"),
            super::rendezvous_rank("web/api", "n2")
        );
    }
}
