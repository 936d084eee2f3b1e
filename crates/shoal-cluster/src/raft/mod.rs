//! The cluster's consensus: Raft (openraft 0.9) in front of the replicated
//! [`State`].
//!
//! [`RaftNode`] is the one entry point for changes to the cluster state:
//! `propose` a command and get its [`Outcome`] once a majority of voters has
//! it on disk and it is applied; `read` the local state; `subscribe` to the
//! applied index. A node that is not the leader forwards writes (and
//! membership changes) to the leader over HTTP; `linearizable_read` makes the
//! local state catch up with every write acknowledged before the call.
//!
//! - [`store`]: the log, vote and snapshots in `<data_dir>/raft.redb`.
//! - [`network`]: Raft RPCs as HTTP JSON to the peers' API addresses.
//! - [`http`]: the routes under `/v1/raft/*` that [`RaftNode::router`] serves.
//!
//! openraft's types stay inside this module: its 0.10 changes the storage
//! and network traits.

mod http;
mod network;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, Weak};
use std::time::{Duration, Instant};

use openraft::error::{
    CheckIsLeaderError, ClientWriteError, Fatal, InitializeError, RaftError as OpenRaftError,
};
use openraft::{ChangeMembers, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use redb::Database;
use serde::{Deserialize, Serialize};
use shoal_state::{ApplyError, Command, Entry, Outcome, State};
use tokio::sync::watch;

use network::{Network, Peers, SendError};

/// Largest AppendEntries body a node sends or accepts; a batch above it is
/// split by openraft.
pub const APPEND_BODY_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Largest snapshot a node sends or accepts (one body).
pub const SNAPSHOT_BODY_MAX_BYTES: usize = 256 * 1024 * 1024;
/// Largest forwarded call (one entry, or a membership change).
pub const FORWARD_BODY_MAX_BYTES: usize = 32 * 1024 * 1024;
/// Time allowed to send and install a whole snapshot on a follower.
pub const SNAPSHOT_SEND_TIMEOUT_MS: u64 = 60_000;
/// Entries per AppendEntries batch.
pub const APPEND_ENTRIES_PER_BATCH_MAX: u64 = 300;
/// Time `shutdown` waits for the store to close.
const SHUTDOWN_WAIT_MAX: Duration = Duration::from_secs(5);
/// Time `open` waits for the committed log to be re-applied.
const REPLAY_WAIT_MAX: Duration = Duration::from_secs(60);
/// Longest pause between two looks for a leader.
const LEADER_POLL_MAX: Duration = Duration::from_millis(100);

openraft::declare_raft_types!(
    /// openraft's types for shoal: entries carry a [`shoal_state::Entry`].
    pub(crate) TypeConfig:
        D = Entry,
        R = Applied,
        NodeId = u64,
        Node = NodeInfo,
        SnapshotData = Cursor<Vec<u8>>,
);

/// What applying one log entry gave: `None` for blank and membership
/// entries, the state machine's answer for commands.
pub(crate) type Applied = Option<Result<Outcome, ApplyError>>;

/// A cluster member as the membership records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    /// `host:port` of the node's HTTP server (which serves [`RaftNode::router`]).
    pub api_addr: String,
}

/// How to run one node.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// Unique and stable for the life of the node's data dir.
    pub node_id: u64,
    pub name: String,
    /// `host:port` where this node's HTTP server listens.
    pub api_addr: String,
    /// Holds `raft.redb`.
    pub data_dir: PathBuf,
    /// Leader heartbeat; also openraft's timeout for one AppendEntries.
    pub heartbeat_ms: u64,
    /// A node picks its election timeout at random in this range, once. A
    /// follower campaigns when it has not heard from the leader for
    /// `election_timeout_max_ms` (the leader's lease) plus that timeout.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Snapshot after this many applied entries since the last one.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind a snapshot (a follower behind by less
    /// catches up from the log instead of a snapshot).
    pub log_kept_after_snapshot: u64,
    /// How long `propose`, `linearizable_read` and membership calls wait for
    /// a leader and for their answer.
    pub wait_max: Duration,
}

impl RaftConfig {
    /// Defaults for a LAN: heartbeat 100 ms, election timeout 300–600 ms,
    /// a snapshot every 1024 entries, 5 s waits.
    ///
    /// openraft lets a follower that heard from a leader campaign only after
    /// the leader's lease (`election_timeout_max`) *plus* its own random
    /// election timeout, so a failed leader is replaced after 0.9–1.2 s
    /// (plus one tick of 150 ms) with these defaults.
    pub fn new(
        node_id: u64,
        name: impl Into<String>,
        api_addr: impl Into<String>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        RaftConfig {
            node_id,
            name: name.into(),
            api_addr: api_addr.into(),
            data_dir: data_dir.into(),
            heartbeat_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            snapshot_every_entries: crate::SNAPSHOT_EVERY_ENTRIES,
            log_kept_after_snapshot: 128,
            wait_max: Duration::from_secs(5),
        }
    }

    fn openraft_config(&self) -> Result<openraft::Config, RaftError> {
        openraft::Config {
            cluster_name: "shoal".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: SNAPSHOT_SEND_TIMEOUT_MS,
            max_payload_entries: APPEND_ENTRIES_PER_BATCH_MAX,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries.max(1)),
            max_in_snapshot_log_to_keep: self.log_kept_after_snapshot,
            // Followers further behind than this get a snapshot.
            replication_lag_threshold: self.snapshot_every_entries.max(1) * 4,
            ..Default::default()
        }
        .validate()
        .map_err(|error| RaftError::Config(error.to_string()))
    }
}

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

/// One node of the cluster: openraft, its store and the applied state.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    info: NodeInfo,
    config: RaftConfig,
    raft: Raft<TypeConfig>,
    metrics: watch::Receiver<RaftMetrics<u64, NodeInfo>>,
    state: Arc<RwLock<State>>,
    applied: watch::Receiver<u64>,
    client: reqwest::Client,
    peers: Arc<Peers>,
    /// The store, held by openraft's tasks only: gone once they stopped.
    db: Weak<Database>,
    /// The newest log format every node of the cluster reads, as the node
    /// last learnt it ([`RaftNode::set_cluster_log_version`]); the format
    /// this node appends entries in when it leads.
    cluster_log_version: AtomicU32,
}

/// A call that must run on the leader.
#[derive(Debug, Clone)]
pub(crate) enum LeaderOp {
    Propose(Entry),
    ReadIndex,
    AddLearner(u64, NodeInfo),
    ChangeVoters(BTreeSet<u64>),
    RemoveNodes(BTreeSet<u64>),
}

impl LeaderOp {
    /// Whether sending it twice is harmless (all but a command).
    fn retry_safe(&self) -> bool {
        !matches!(self, LeaderOp::Propose(_))
    }
}

/// What the leader answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LeaderResult {
    Applied(Result<Outcome, ApplyError>),
    ReadIndex(u64),
    MembershipChanged,
}

/// Why the local node could not run a leader call.
pub(crate) enum LocalError {
    /// This node is not (or no longer) the leader: try the leader.
    NotLeader(Option<u64>),
    Failed(ProposeError),
}

impl RaftNode {
    /// Opens `<data_dir>/raft.redb` (creating it), restores the latest
    /// snapshot, re-applies the committed log after it and starts Raft.
    pub async fn open(config: RaftConfig) -> Result<RaftNode, RaftError> {
        let path = config.data_dir.join("raft.redb");
        let store_error = |error: String| RaftError::Store {
            path: path.clone(),
            error,
        };
        std::fs::create_dir_all(&config.data_dir).map_err(|error| RaftError::Store {
            path: config.data_dir.clone(),
            error: format!("creating the data dir: {error}"),
        })?;
        let raft_config = Arc::new(config.openraft_config()?);
        let db = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || store::open_database(&path))
                .await
                .map_err(|error| store_error(error.to_string()))?
                .map_err(store_error)?
        };
        let db = Arc::new(db);
        let weak_db = Arc::downgrade(&db);
        let (state_machine, state, applied) = store::StateMachine::open(db.clone())
            .map_err(|error| store_error(error.to_string()))?;
        let mut log_store = store::LogStore::new(db);
        let committed = {
            use openraft::storage::RaftLogStorage;
            log_store
                .read_committed()
                .await
                .map_err(|error| store_error(error.to_string()))?
        };
        let client = network::http_client().map_err(RaftError::Config)?;
        let peers = Arc::new(Peers::default());
        let network = Network {
            id: config.node_id,
            client: client.clone(),
            peers: peers.clone(),
        };
        let raft = Raft::new(
            config.node_id,
            raft_config,
            network,
            log_store,
            state_machine,
        )
        .await
        .map_err(|error| RaftError::Stopped(error.to_string()))?;
        // A round trip through Raft's core: its metrics are loaded after it.
        if let Err(error) = raft.is_initialized().await {
            let _ = raft.shutdown().await;
            return Err(RaftError::Stopped(error.to_string()));
        }
        // Come back with the state that was committed before the stop.
        if let Some(committed) = committed {
            let mut applied = applied.clone();
            let replayed = tokio::time::timeout(
                REPLAY_WAIT_MAX,
                applied.wait_for(|index| *index >= committed.index),
            )
            .await
            .is_ok_and(|waited| waited.is_ok());
            if !replayed {
                tracing::warn!(
                    committed = committed.index,
                    applied = *applied.borrow(),
                    "the committed log was not re-applied in time"
                );
            }
        }
        let info = NodeInfo {
            name: config.name.clone(),
            api_addr: config.api_addr.clone(),
        };
        let metrics = raft.metrics();
        if let Some(recorded) = metrics
            .borrow()
            .membership_config
            .membership()
            .get_node(&config.node_id)
            .filter(|recorded| **recorded != info)
        {
            tracing::warn!(
                node = config.node_id,
                recorded = ?recorded,
                now = ?info,
                "this node's name or API address differs from the one the cluster recorded; peers use the recorded one"
            );
        }
        Ok(RaftNode {
            inner: Arc::new(Inner {
                id: config.node_id,
                info,
                config,
                raft,
                metrics,
                state,
                applied,
                client,
                peers,
                db: weak_db,
                cluster_log_version: AtomicU32::new(shoal_state::LOG_VERSION_FIRST),
            }),
        })
    }

    /// The internal routes under `/v1/raft/*` (Raft RPCs and calls forwarded
    /// to the leader); merge them into the node's HTTP server.
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    /// Makes this node a cluster of itself (the first node). A no-op on a
    /// node that already has a membership. Returns once it leads (or after
    /// the wait bound, when the leader is then elected in the background).
    pub async fn initialize(&self) -> Result<(), RaftError> {
        if !self.is_initialized() {
            let members = BTreeMap::from([(self.inner.id, self.inner.info.clone())]);
            match self.inner.raft.initialize(members).await {
                Ok(()) => {}
                Err(OpenRaftError::APIError(InitializeError::NotAllowed(_))) => return Ok(()),
                Err(OpenRaftError::APIError(error)) => {
                    return Err(RaftError::Initialize(error.to_string()))
                }
                Err(OpenRaftError::Fatal(error)) => {
                    return Err(RaftError::Stopped(error.to_string()))
                }
            }
        }
        let mut metrics = self.inner.metrics.clone();
        let _ = tokio::time::timeout(
            self.inner.config.wait_max,
            metrics.wait_for(|m| m.current_leader.is_some()),
        )
        .await;
        Ok(())
    }

    /// Whether this node has a membership (it was initialized, or a leader
    /// added it); persisted.
    pub fn is_initialized(&self) -> bool {
        self.inner
            .metrics
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .next()
            .is_some()
    }

    /// Appends `command` (stamped with the proposer's clock `at_ms`) to the
    /// replicated log and returns what applying it did. On the leader it is
    /// answered once a majority of voters has the entry on disk and it is
    /// applied; elsewhere it is forwarded to the leader. Waits at most
    /// `wait_max` for a leader.
    pub async fn propose(&self, at_ms: u64, command: Command) -> Result<Outcome, ProposeError> {
        let entry = Entry::proposed(at_ms, &self.inner.info.name, &command);
        match self.on_leader(LeaderOp::Propose(entry)).await? {
            LeaderResult::Applied(result) => result.map_err(ProposeError::Rejected),
            other => Err(unexpected(other)),
        }
    }

    /// Tells the node the newest log format that every node of the cluster
    /// (voters and learners) reads. It starts at the first format, so a node
    /// that has not learnt it yet writes what every release reads.
    pub fn set_cluster_log_version(&self, version: u32) {
        let version = version.clamp(shoal_state::LOG_VERSION_FIRST, shoal_state::LOG_VERSION);
        let before = self
            .inner
            .cluster_log_version
            .swap(version, Ordering::Relaxed);
        if before != version {
            tracing::info!(from = before, to = version, "log format the cluster reads");
        }
    }

    pub fn cluster_log_version(&self) -> u32 {
        self.inner.cluster_log_version.load(Ordering::Relaxed)
    }

    /// Returns once `read()` reflects every write acknowledged before the
    /// call: asks the leader for its read index (the leader confirms its
    /// leadership with a majority) and waits until this node applied it.
    pub async fn linearizable_read(&self) -> Result<(), ProposeError> {
        let index = match self.on_leader(LeaderOp::ReadIndex).await? {
            LeaderResult::ReadIndex(index) => index,
            other => return Err(unexpected(other)),
        };
        let mut applied = self.inner.applied.clone();
        let wait = self.inner.config.wait_max;
        let waited = tokio::time::timeout(wait, applied.wait_for(|applied| *applied >= index))
            .await
            .map(|waited| waited.is_ok());
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => Err(ProposeError::Stopped),
            Err(_) => Err(ProposeError::Timeout(format!(
                "node {} applied up to {} but the leader's read index is {index}; not caught up within {} ms",
                self.inner.id,
                *applied.borrow(),
                wait.as_millis()
            ))),
        }
    }

    /// The local applied state; hold it briefly (applying waits for it).
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.inner
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes whenever an entry is applied; the value is the last applied
    /// index.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied.clone()
    }

    /// Adds a node as a learner (it receives the log but does not vote);
    /// forwarded to the leader when needed. Returns once the membership
    /// entry is committed, without waiting for the learner to catch up.
    pub async fn add_learner(
        &self,
        node_id: u64,
        name: String,
        api_addr: String,
    ) -> Result<(), ProposeError> {
        let node = NodeInfo { name, api_addr };
        self.on_leader(LeaderOp::AddLearner(node_id, node))
            .await
            .map(|_| ())
    }

    /// Makes `voters` the set of voters; each must already be a member
    /// (a learner or a voter). Voters left out stay as learners.
    pub async fn change_voters(&self, voters: BTreeSet<u64>) -> Result<(), ProposeError> {
        self.on_leader(LeaderOp::ChangeVoters(voters))
            .await
            .map(|_| ())
    }

    /// Drops nodes from the membership, voters or learners.
    pub async fn remove_nodes(&self, ids: BTreeSet<u64>) -> Result<(), ProposeError> {
        self.on_leader(LeaderOp::RemoveNodes(ids)).await.map(|_| ())
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> RaftStatus {
        let metrics = self.inner.metrics.borrow();
        let membership = metrics.membership_config.membership();
        RaftStatus {
            node_id: self.inner.id,
            leader: metrics.current_leader,
            role: match metrics.state {
                ServerState::Leader => RaftRole::Leader,
                ServerState::Follower => RaftRole::Follower,
                ServerState::Learner => RaftRole::Learner,
                ServerState::Candidate => RaftRole::Candidate,
                ServerState::Shutdown => RaftRole::Shutdown,
            },
            term: metrics.current_term,
            last_applied: *self.inner.applied.borrow(),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            nodes: membership
                .nodes()
                .map(|(id, node)| (*id, node.clone()))
                .collect(),
        }
    }

    /// Stops Raft and waits (bounded) until the store is closed, so the data
    /// dir can be opened again.
    pub async fn shutdown(&self) {
        if let Err(error) = self.inner.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
        let deadline = Instant::now() + SHUTDOWN_WAIT_MAX;
        while self.inner.db.strong_count() > 0 {
            if Instant::now() >= deadline {
                tracing::warn!("raft store still open {SHUTDOWN_WAIT_MAX:?} after shutdown");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs `op` on the leader: here if this node leads, else over HTTP.
    /// Retries (within `wait_max`) while there is no leader, the leader moved
    /// or could not be reached, but never resends a command that may have
    /// reached a leader.
    async fn on_leader(&self, op: LeaderOp) -> Result<LeaderResult, ProposeError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.config.wait_max;
        let mut metrics = inner.metrics.clone();
        let mut last_problem: Option<String> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(self.no_leader(last_problem));
            }
            let (state, leader) = {
                let metrics = metrics.borrow_and_update();
                let leader = metrics.current_leader.map(|id| {
                    let node = metrics
                        .membership_config
                        .membership()
                        .get_node(&id)
                        .cloned();
                    (id, node)
                });
                (metrics.state, leader)
            };
            if state == ServerState::Shutdown {
                return Err(ProposeError::Stopped);
            }
            match leader {
                Some((id, _)) if id == inner.id => {
                    match self.run_local(op.clone(), remaining).await {
                        Ok(result) => return Ok(result),
                        Err(LocalError::NotLeader(_)) => {
                            last_problem = Some(format!("node {id} lost the leadership"));
                        }
                        Err(LocalError::Failed(error)) => return Err(error),
                    }
                }
                Some((id, Some(node))) => {
                    match http::forward(self, id, &node.api_addr, &op, remaining).await {
                        Ok(http::ForwardReply::Done { result }) => return Ok(result),
                        Ok(http::ForwardReply::NotLeader { .. }) => {
                            last_problem = Some(format!("node {id} is no longer the leader"));
                        }
                        Ok(http::ForwardReply::Failed {
                            error: ProposeError::Stopped,
                        }) if op.retry_safe() => {
                            last_problem = Some(format!("leader {id} is stopping"));
                        }
                        Ok(http::ForwardReply::Failed {
                            error: ProposeError::Stopped,
                        }) => {
                            return Err(ProposeError::Unreachable {
                                leader: id,
                                addr: node.api_addr,
                                error: "it stopped while handling the write; the write may or may not have been applied".to_string(),
                            })
                        }
                        Ok(http::ForwardReply::Failed { error }) => return Err(error),
                        Err(SendError::NotSent(error)) => {
                            last_problem = Some(format!("leader {id} is unreachable: {error}"));
                        }
                        Err(error) if op.retry_safe() => {
                            last_problem = Some(format!("leader {id}: {error}"));
                        }
                        Err(error) => {
                            return Err(ProposeError::Unreachable {
                                leader: id,
                                addr: node.api_addr,
                                error: format!(
                                    "{error}; the write may or may not have been applied"
                                ),
                            })
                        }
                    }
                }
                Some((id, None)) => {
                    last_problem = Some(format!(
                        "leader {id} is not in this node's membership (no address known)"
                    ));
                }
                None => {}
            }
            let pause = deadline
                .saturating_duration_since(Instant::now())
                .min(LEADER_POLL_MAX);
            match tokio::time::timeout(pause, metrics.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(_)) => return Err(ProposeError::Stopped),
            }
        }
    }

    /// Runs `op` here, as the leader.
    pub(crate) async fn run_local(
        &self,
        op: LeaderOp,
        timeout: Duration,
    ) -> Result<LeaderResult, LocalError> {
        let inner = &self.inner;
        let raft = &inner.raft;
        let id = inner.id;
        let ms = timeout.as_millis();
        let (state, leader) = {
            let metrics = inner.metrics.borrow();
            (metrics.state, metrics.current_leader)
        };
        if state == ServerState::Shutdown {
            return Err(LocalError::Failed(ProposeError::Stopped));
        }
        if leader != Some(id) {
            return Err(LocalError::NotLeader(leader));
        }
        match op {
            LeaderOp::Propose(mut entry) => {
                self.check_quorum()?;
                entry
                    .appended_by(&inner.info.name, self.cluster_log_version())
                    .map_err(|error| LocalError::Failed(ProposeError::MixedVersions(error)))?;
                match tokio::time::timeout(timeout, raft.client_write(entry)).await {
                    Ok(Ok(response)) => match response.data {
                        Some(result) => Ok(LeaderResult::Applied(result)),
                        None => Err(LocalError::Failed(ProposeError::Store(
                            "a command's entry was applied without an outcome".to_string(),
                        ))),
                    },
                    Ok(Err(error)) => Err(write_error(error)),
                    Err(_) => Err(LocalError::Failed(ProposeError::Timeout(format!(
                        "leader {id} appended the write but a majority of voters did not acknowledge it within {ms} ms; it may still be applied later"
                    )))),
                }
            }
            LeaderOp::ReadIndex => {
                match tokio::time::timeout(timeout, raft.get_read_log_id()).await {
                    Ok(Ok((read, _applied))) => Ok(LeaderResult::ReadIndex(
                        read.map(|log_id| log_id.index).unwrap_or(0),
                    )),
                    Ok(Err(OpenRaftError::APIError(CheckIsLeaderError::ForwardToLeader(to)))) => {
                        Err(LocalError::NotLeader(to.leader_id))
                    }
                    Ok(Err(OpenRaftError::APIError(CheckIsLeaderError::QuorumNotEnough(error)))) => {
                        Err(LocalError::Failed(ProposeError::NoQuorum(format!(
                            "leader {id} could not confirm its leadership: {error}; {}",
                            self.unreachable_voters()
                        ))))
                    }
                    Ok(Err(OpenRaftError::Fatal(error))) => Err(fatal(error)),
                    Err(_) => Err(LocalError::Failed(ProposeError::NoQuorum(format!(
                        "leader {id} could not confirm its leadership with a majority of voters within {ms} ms; {}",
                        self.unreachable_voters()
                    )))),
                }
            }
            LeaderOp::AddLearner(node_id, node) => {
                let change = raft.add_learner(node_id, node, false);
                membership_result(tokio::time::timeout(timeout, change).await, ms)
            }
            LeaderOp::ChangeVoters(voters) => {
                let change = raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), true);
                membership_result(tokio::time::timeout(timeout, change).await, ms)
            }
            LeaderOp::RemoveNodes(ids) => {
                let started = Instant::now();
                let voters: BTreeSet<u64> = {
                    let metrics = inner.metrics.borrow();
                    metrics
                        .membership_config
                        .membership()
                        .voter_ids()
                        .filter(|voter| ids.contains(voter))
                        .collect()
                };
                if !voters.is_empty() {
                    let change = raft.change_membership(ChangeMembers::RemoveVoters(voters), false);
                    membership_result(tokio::time::timeout(timeout, change).await, ms)?;
                }
                let learners: BTreeSet<u64> = {
                    let metrics = inner.metrics.borrow();
                    metrics
                        .membership_config
                        .membership()
                        .nodes()
                        .map(|(id, _)| *id)
                        .filter(|id| ids.contains(id))
                        .collect()
                };
                if learners.is_empty() {
                    return Ok(LeaderResult::MembershipChanged);
                }
                let remaining = timeout.saturating_sub(started.elapsed());
                let change = raft.change_membership(ChangeMembers::RemoveNodes(learners), false);
                membership_result(tokio::time::timeout(remaining, change).await, ms)
            }
        }
    }

    /// Refuses a write up front when this leader has not heard from a
    /// majority of voters lately (it would only time out).
    fn check_quorum(&self) -> Result<(), LocalError> {
        let inner = &self.inner;
        let window = Duration::from_millis(inner.config.election_timeout_max_ms * 2);
        // Copy what is needed and let go of the metrics at once: a second
        // borrow while openraft waits to publish new metrics deadlocks
        // (the lock prefers writers).
        let (term, configs): (u64, Vec<Vec<u64>>) = {
            let metrics = inner.metrics.borrow();
            let configs = metrics
                .membership_config
                .membership()
                .get_joint_config()
                .iter()
                .map(|config| config.iter().copied().collect())
                .collect();
            (metrics.current_term, configs)
        };
        for config in configs {
            let answered = config
                .iter()
                .filter(|id| **id == inner.id || inner.peers.answered_within(**id, window))
                .count();
            if answered < config.len() / 2 + 1 {
                return Err(LocalError::Failed(ProposeError::NoQuorum(format!(
                    "leader {} (term {term}) heard from {answered} of {} voters in the last {} ms and needs {}; {}",
                    inner.id,
                    config.len(),
                    window.as_millis(),
                    config.len() / 2 + 1,
                    self.unreachable_voters()
                ))));
            }
        }
        Ok(())
    }

    /// The voters of the current membership (the metrics borrow ends here).
    fn voter_ids(&self) -> Vec<u64> {
        self.inner
            .metrics
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// "unreachable from node N: 1 (why), 2 (why)".
    fn unreachable_voters(&self) -> String {
        let inner = &self.inner;
        let window = Duration::from_millis(inner.config.election_timeout_max_ms * 3);
        let voters = self.voter_ids();
        let unreachable: Vec<String> = voters
            .iter()
            .filter(|id| **id != inner.id)
            .filter_map(|id| {
                inner
                    .peers
                    .why_unreachable(*id, window)
                    .map(|why| format!("{id} ({why})"))
            })
            .collect();
        if unreachable.is_empty() {
            format!("node {} reaches every voter", inner.id)
        } else {
            format!(
                "unreachable from node {}: {}",
                inner.id,
                unreachable.join(", ")
            )
        }
    }

    fn no_leader(&self, last_problem: Option<String>) -> ProposeError {
        let inner = &self.inner;
        let window = Duration::from_millis(inner.config.election_timeout_max_ms * 3);
        let wait = inner.config.wait_max.as_millis();
        let voters = self.voter_ids();
        let last = last_problem
            .map(|problem| format!("; last: {problem}"))
            .unwrap_or_default();
        if voters.is_empty() {
            return ProposeError::NoLeader(format!(
                "node {} is not part of a cluster yet (no membership: initialize it or add it to a cluster){last}",
                inner.id
            ));
        }
        let unreachable = voters
            .iter()
            .filter(|id| **id != inner.id)
            .filter(|id| inner.peers.why_unreachable(**id, window).is_some())
            .count();
        let reachable = voters.len() - unreachable;
        let quorum = voters.len() / 2 + 1;
        let voter_list = voters
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        if reachable < quorum {
            ProposeError::NoLeader(format!(
                "the cluster has no quorum ({unreachable} of {} voters unreachable, {quorum} of them needed; {})",
                voters.len(),
                self.unreachable_voters()
            ))
        } else {
            ProposeError::NoLeader(format!(
                "none elected within {wait} ms (voters {voter_list}; {}){last}",
                self.unreachable_voters()
            ))
        }
    }

    pub(crate) fn raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.inner.client
    }

    pub(crate) fn peers(&self) -> &Peers {
        &self.inner.peers
    }

    pub(crate) fn wait_max(&self) -> Duration {
        self.inner.config.wait_max
    }
}

fn unexpected(result: LeaderResult) -> ProposeError {
    ProposeError::Store(format!(
        "the leader answered with an unexpected result: {result:?}"
    ))
}

fn fatal(error: Fatal<u64>) -> LocalError {
    match error {
        Fatal::Stopped => LocalError::Failed(ProposeError::Stopped),
        other => LocalError::Failed(ProposeError::Store(other.to_string())),
    }
}

fn write_error(error: OpenRaftError<u64, ClientWriteError<u64, NodeInfo>>) -> LocalError {
    match error {
        OpenRaftError::APIError(ClientWriteError::ForwardToLeader(to)) => {
            LocalError::NotLeader(to.leader_id)
        }
        OpenRaftError::APIError(ClientWriteError::ChangeMembershipError(error)) => {
            LocalError::Failed(ProposeError::Membership(error.to_string()))
        }
        OpenRaftError::Fatal(error) => fatal(error),
    }
}

type ChangeResult = Result<
    Result<
        openraft::raft::ClientWriteResponse<TypeConfig>,
        OpenRaftError<u64, ClientWriteError<u64, NodeInfo>>,
    >,
    tokio::time::error::Elapsed,
>;

fn membership_result(result: ChangeResult, ms: u128) -> Result<LeaderResult, LocalError> {
    match result {
        Ok(Ok(_)) => Ok(LeaderResult::MembershipChanged),
        Ok(Err(error)) => Err(write_error(error)),
        Err(_) => Err(LocalError::Failed(ProposeError::Timeout(format!(
            "the membership change was not committed within {ms} ms; it may still complete"
        )))),
    }
}
