//! What a Raft node answers besides outcomes: its errors, its role and its
//! view of the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shoal_state::ApplyError;

use super::NodeInfo;

/// Why a node could not open or initialize.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("raft store {path}: {error}")]
    Store { path: PathBuf, error: String },
    #[error("raft config: {0}")]
    Config(String),
    #[error("cannot initialize the cluster: {0}")]
    Initialize(String),
    #[error("raft stopped: {0}")]
    Stopped(String),
}

/// Why a proposal, a read or a membership change did not happen (or may
/// not have). Everything but [`ProposeError::Rejected`] means the cluster is
/// (for now) unable to answer: HTTP 503 with the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ProposeError {
    /// The state machine refused the command (same on every node).
    #[error(transparent)]
    Rejected(ApplyError),
    /// No leader could be found in time.
    #[error("no leader: {0}")]
    NoLeader(String),
    /// The leader cannot reach a majority of voters.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The leader did not answer a forwarded call; it may have acted on it.
    #[error("leader {leader} at {addr} did not answer: {error}")]
    Unreachable {
        leader: u64,
        addr: String,
        error: String,
    },
    /// Accepted but not committed in time; it may still be applied later.
    #[error("{0}")]
    Timeout(String),
    /// openraft refused a membership change (e.g. a voter that is not a
    /// learner yet, or another change in progress).
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("raft store: {0}")]
    Store(String),
    #[error("the raft node is stopped")]
    Stopped,
    /// The command needs a log format some node of the cluster does not
    /// read yet (the cluster is being upgraded).
    #[error("{0}")]
    MixedVersions(String),
}

impl ProposeError {
    /// True when the command reached the state machine and was refused
    /// there (a client error); false when the cluster could not answer.
    pub fn is_rejected(&self) -> bool {
        matches!(self, ProposeError::Rejected(_))
    }
}

/// A node's role in Raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaftRole {
    Leader,
    Follower,
    Learner,
    Candidate,
    Shutdown,
}

impl RaftRole {
    pub fn as_str(self) -> &'static str {
        match self {
            RaftRole::Leader => "leader",
            RaftRole::Follower => "follower",
            RaftRole::Learner => "learner",
            RaftRole::Candidate => "candidate",
            RaftRole::Shutdown => "shutdown",
        }
    }
}

/// What this node knows of the cluster, from openraft's metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    pub node_id: u64,
    pub leader: Option<u64>,
    pub role: RaftRole,
    pub term: u64,
    /// Index of the last entry applied to the local state.
    pub last_applied: u64,
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    pub nodes: BTreeMap<u64, NodeInfo>,
}
