//! Cluster membership by SWIM gossip ([foca]).
//!
//! [`Membership::start`] binds a UDP socket and runs one task that drives
//! foca (which is sans-IO): it feeds foca the datagrams and the timer events
//! it asked for, sends what foca wants sent, and turns foca's member list
//! plus the node facts into the list [`Membership::members`] returns.
//!
//! - **Identity** (what foca gossips about): node name, gossip address and a
//!   boot id chosen at each start; a restarted node, or one the cluster
//!   declared dead, comes back as a newer identity that replaces the old one.
//! - **Facts** ([`NodeFacts`]: API address, Raft id, resources, labels) are
//!   foca custom broadcasts keyed by node name, newest version wins. Each
//!   node re-broadcasts its facts when they change, when it sees a new
//!   member (so a late joiner learns everyone's) and every
//!   [`FACTS_REFRESH_INTERVAL`]. A member whose facts are not known yet is
//!   left out of [`Membership::members`] until they arrive (usually within
//!   the same round trip as the join).
//! - **Signed facts** (`signing`): each node signs its facts with a key of
//!   its own; given the state's keys ([`Membership::set_facts_keys`]), a
//!   member takes a node's facts only when that node's key signed them, and
//!   lists for the node only the identity at the address its signed facts
//!   name, so no other member (every member holds the keyring) speaks for
//!   it. The same key proves each of the node's SWIM identities (`codec`),
//!   so, where its key is known, no other member can announce a newer one
//!   in its name (after the 30 s in which a member that switched to proofs
//!   still takes datagrams without them).
//! - **Left vs dead**: foca only knows "down". A node that leaves
//!   ([`Membership::leave`]) first broadcasts its facts marked `left`, so the
//!   others list it as [`MemberStatus::Left`] rather than `Dead`.
//! - **Cluster identity**: every datagram starts with a magic, a version
//!   byte and a hash of the cluster id (see `wire`); datagrams of other
//!   clusters are dropped and counted ([`MembershipStats`]). This is not
//!   authentication.
//! - **Peer cache**: the gossip addresses of known members (alive, suspect,
//!   and dead ones until forgotten; never the ones that left) are written
//!   atomically to a JSON file at most every [`PEER_CACHE_WRITE_INTERVAL`],
//!   never replaced by an empty list, and read at start when no peers are
//!   given. While the node knows no live member it re-announces itself to
//!   its seed peers with a back-off, so nodes of a restarted cluster find
//!   each other in whatever order they start.
//!
//! Time: foca's timers run on tokio's monotonic clock; the wall clock is
//! read only for `since_ms`, the boot id and the peer cache's timestamp.
//!
//! The code, by job:
//!
//! - `config`: [`MembershipConfig`] and its checks, the facts' size included.
//! - `handle`: [`Membership`], the handle: start, members, stats, facts
//!   updates, join, leave, shutdown.
//! - `driver`: the gossip task, one loop over the socket and foca's timers.
//! - `stats`: the counters behind [`MembershipStats`].
//! - `facts`, `signing`, `identity`, `wire`, `peer_cache`: what is
//!   gossiped and who vouches for it, who it is about, the datagram
//!   envelope, the peers file.
//! - `codec`: foca's codec, which writes each identity with its proof, and
//!   packets read and rewritten the way it writes them.

mod codec;
mod config;
mod driver;
mod facts;
mod handle;
mod identity;
mod peer_cache;
mod signing;
mod stats;
mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use config::{GossipSealing, MembershipConfig};
pub use handle::Membership;
pub use signing::{parse_facts_key, FactsKeyError, FactsKeys, FactsSigner, FACTS_KEY_BYTES};
pub use stats::MembershipStats;
pub use wire::{GossipKey, GossipKeyring, KEYS_MAX as GOSSIP_KEYS_MAX, SKEW_MAX_MS};

/// Where gossip listens unless told otherwise (the memberlist/Serf port).
pub const DEFAULT_GOSSIP_PORT: u16 = 7946;
/// How long a dead or departed node stays listed before it is forgotten,
/// unless told otherwise: the cluster's one default,
/// [`shoal_types::node::FORGET_DEAD_AFTER_DEFAULT_MS`].
pub const DEFAULT_FORGET_DEAD_AFTER: Duration =
    Duration::from_millis(shoal_types::node::FORGET_DEAD_AFTER_DEFAULT_MS);
/// Members tracked at most (foca's list, dead ones included, and the facts
/// table). At the limit, datagrams that would add a member are dropped.
pub const MEMBERS_MAX: usize = 1024;
/// Longest node name, in bytes (it is part of every datagram's header).
pub const NAME_MAX_BYTES: usize = 64;
/// Longest cluster id, in bytes.
pub const CLUSTER_ID_MAX_BYTES: usize = 256;
/// Largest encoded facts broadcast, in bytes; it must fit in one datagram
/// next to the header and membership updates.
pub const FACTS_MAX_BYTES: usize = 768;
/// Largest datagram sent, in bytes, below a 1500-byte MTU: foca's packets
/// are kept to this less what sealing adds (`wire::OVERHEAD`, 73 bytes).
pub const PACKET_MAX_BYTES: usize = 1400;
/// Peers kept as seeds and written to the peer cache, at most.
pub const PEERS_MAX: usize = 64;
/// Largest peer cache file read, in bytes.
pub const PEER_CACHE_FILE_MAX_BYTES: u64 = 64 * 1024;
/// Commands (join, leave) queued to the gossip task, at most.
pub const COMMANDS_MAX: usize = 64;
/// foca timer events pending, at most (a few per member in practice).
pub const TIMERS_MAX: usize = 16 * MEMBERS_MAX;
/// How often a node re-broadcasts its facts even when nothing changed.
pub const FACTS_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Minimum time between two writes of the peer cache.
pub const PEER_CACHE_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// This node's metadata, spread to every member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    pub name: String,
    pub api_addr: String,
    pub raft_id: u64,
    pub os: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub labels: BTreeMap<String, String>,
    pub started_at_ms: u64,
    /// The node's shoal release, e.g. `0.2.0` (empty from shoal 0.1, which
    /// did not gossip it).
    pub release: String,
    /// The newest log format the node reads (0 from shoal 0.1, which reads
    /// only the first).
    pub log_version: u32,
    /// The generation of the gossip keyring the node holds (0: none, or a
    /// release before 0.7): the leader takes the next step of a key
    /// rotation only once every member holds the last.
    #[serde(default)]
    pub gossip_keys: u64,
    /// The generation of the cluster's CA record the node has taken in
    /// full: it trusts that record's roots and its certificate is of the
    /// signer it names (0: not yet, or a release before 0.11). The leader
    /// ends a CA rotation only once every node has taken it.
    #[serde(default)]
    pub ca_generation: u32,
}

impl NodeFacts {
    /// The newest log format the node reads, counting a node that does not
    /// say as one of shoal 0.1.
    pub fn log_version_read(&self) -> u32 {
        self.log_version.max(shoal_state::LOG_VERSION_FIRST)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemberStatus {
    Alive,
    /// Missed its probes; declared dead unless it answers within
    /// [`MembershipConfig::suspect_to_down_after`].
    Suspect,
    /// Declared dead by the cluster (crash, partition). Listed until
    /// [`MembershipConfig::dead_forget_after`].
    Dead,
    /// Left on purpose ([`Membership::leave`]). Listed as long as dead ones.
    Left,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub facts: NodeFacts,
    pub gossip_addr: SocketAddr,
    pub status: MemberStatus,
    /// Wall clock (ms since the epoch) when this node saw it enter `status`.
    pub since_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("invalid membership config: {0}")]
    InvalidConfig(String),
    #[error("node facts are named {facts:?} but the node is {node:?}")]
    FactsName { facts: String, node: String },
    #[error(
        "node facts take {size} bytes encoded, more than the {max} that fit in a gossip \
         datagram: use fewer or shorter labels"
    )]
    FactsTooLarge { size: usize, max: usize },
    #[error("encoding node facts: {0}")]
    Encode(String),
    #[error("cannot bind the gossip socket to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the gossip membership has stopped")]
    Stopped,
}

/// Wall clock in ms since the epoch (0 if the clock is before it).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
