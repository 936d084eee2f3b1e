//! Nodes as the replicated state records them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// Address of the node's API, `host:port`.
    pub addr: String,
    /// Operating system and kernel, e.g. `Linux 6.1.0`.
    pub os: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_total_bytes: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub started_at_ms: u64,
    pub status: NodeStatus,
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

/// The node's id in the cluster's consensus, derived from its unique name
/// (64-bit FNV-1a), so that every node computes the same id for a name.
pub fn consensus_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn consensus_ids_are_stable_and_distinct() {
        assert_eq!(super::consensus_id(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::consensus_id("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(super::consensus_id("n1"), super::consensus_id("n2"));
    }
}
