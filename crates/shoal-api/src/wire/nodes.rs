//! Nodes and the cluster: a node as listed and changed, what a node tells
//! a joiner, its gossip, the cluster-wide settings.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use shoal_types::NodeStatus;

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct VersionInfo {
    pub version: String,
    pub commit: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct NodeView {
    pub name: String,
    pub addr: String,
    pub status: NodeStatus,
    /// `voter` or `learner` in the cluster's consensus (`-` when not a member).
    pub role: String,
    /// Whether this node leads the consensus now.
    #[serde(default)]
    pub leader: bool,
    pub os: String,
    pub arch: String,
    pub uptime_s: u64,
    pub cpus: u32,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Operators' taints (`KEY=VALUE:EFFECT`).
    #[serde(default)]
    pub taints: Vec<String>,
    /// Whether the node is drained: no new work, its work moved away.
    #[serde(default)]
    pub drain: bool,
    /// What the node's operator lets its tasks do beyond the hardened
    /// defaults: `privileged`, `host_network` (`--allow-…`).
    #[serde(default)]
    pub allows: Vec<String>,
    /// The node's subnet of the cluster CIDR, for its tasks' addresses.
    #[serde(default)]
    pub subnet: Option<String>,
    /// What tasks may request in all, and what the placed ones request.
    #[serde(default)]
    pub cpu_allocatable_millis: u64,
    #[serde(default)]
    pub memory_allocatable_bytes: u64,
    #[serde(default)]
    pub cpu_requested_millis: u64,
    #[serde(default)]
    pub memory_requested_bytes: u64,
    /// Tasks the cluster wants running on the node.
    #[serde(default)]
    pub tasks: u32,
    /// The node's shoal release as it gossips it (empty when unknown:
    /// shoal 0.1 did not gossip it, or the node is not heard from).
    #[serde(default)]
    pub release: String,
    /// The newest log format the node reads (0 when unknown).
    #[serde(default)]
    pub log_version: u32,
}

/// Body of `POST /v1/nodes/{name}/taints`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaintRequest {
    /// `KEY=VALUE:EFFECT` or `KEY:EFFECT`.
    pub taint: String,
}

/// Body of `PUT /v1/nodes/{name}/drain`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    pub drain: bool,
}

/// The answer to a change of a node: whether anything changed, and the node.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct NodeUpdate {
    pub changed: bool,
    pub node: NodeView,
}

/// What a node tells another that wants to join its cluster.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ClusterInfo {
    /// Identity of the cluster, carried by every gossip packet.
    pub cluster_id: String,
    /// The answering node.
    pub name: String,
    /// Where the answering node gossips (UDP).
    pub gossip_addr: String,
    pub leader: Option<String>,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    pub settings: ClusterSettings,
    /// The log format the answering node appends in when it leads: the
    /// newest one every voter and learner reads (0 from shoal 0.1).
    #[serde(default)]
    pub log_version: u32,
    /// The answering node's release (empty from shoal 0.1).
    #[serde(default)]
    pub release: String,
    /// The answering node's gossip: whether it seals, its keyring's ids,
    /// what it sent, took and dropped (absent before shoal 0.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip: Option<GossipView>,
}

/// One node's gossip since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GossipView {
    /// `sealed` (only sealed datagrams sent and taken), `sealing` (sealed
    /// sent, plaintext still taken for a moment after the switch),
    /// `plaintext` (the cluster has a node that reads no sealed gossip, or
    /// this node holds no keyring yet).
    pub mode: String,
    /// `proven` (only datagrams with proofs sent and taken; an identity
    /// whose node's key this node holds is taken only with that key's
    /// proof), `proving` (proofs sent, datagrams without them still taken
    /// for a moment after the switch), `unproven` (the cluster has a node
    /// that reads no proofs, or does not seal yet).
    #[serde(default)]
    pub identities: String,
    /// The generation of the keyring this node holds (0: none).
    pub keyring_generation: u64,
    pub key_ids: Vec<u32>,
    /// The key this node seals with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<u32>,
    pub datagrams_received: u64,
    pub datagrams_sent: u64,
    pub sealed_received: u64,
    pub sealed_sent: u64,
    /// Datagrams dropped, by reason: `malformed`, `other_cluster`,
    /// `unsealed` (plaintext where only sealed ones are taken),
    /// `truncated`, `unknown_key`, `forged`, `replayed`, `stale`,
    /// `oversize`, `members_full`; and facts broadcasts about a node that
    /// its facts key did not sign, `facts_unsigned`; and identities that
    /// claimed another node's gossip address (a datagram sent under one is
    /// dropped, an update about one taken out), `identities_foreign`;
    /// sealed datagrams without proofs where only those with proofs are
    /// taken, `unproven`; and identities whose proof their node's facts key
    /// did not sign, or at this node's address with a newer boot than its
    /// own (dropped or taken out the same way), `identities_unproven`.
    pub dropped: std::collections::BTreeMap<String, u64>,
    /// The nodes whose gossip facts this node takes only when signed by
    /// their facts key (those that recorded one).
    #[serde(default)]
    pub facts_keys: u64,
}

/// Cluster-wide settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// Voters the cluster aims for (1, 3, 5 or 7): every node up to 2
    /// nodes, 3 from 3 nodes on, 5 from 5 on, never more than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voters_max: Option<u32>,
    /// Where tasks' addresses come from (default 10.42.0.0/16); each node
    /// gets a subnet of it. Changes only before nodes hold subnets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_cidr: Option<String>,
    /// Prefix length of each node's subnet (default 24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_prefix_len: Option<u8>,
    /// The DNS zone of service names, `SERVICE.APP.ZONE` (default `shoal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_zone: Option<String>,
}
