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
//! - [`config`]: how to run one node; [`status`]: its errors and status;
//! - `leader`: calls that must run on the leader, here or forwarded;
//! - [`store`]: the log, vote and snapshots in `<data_dir>/raft.redb`.
//! - [`network`]: Raft RPCs as HTTP JSON to the peers' API addresses.
//! - [`http`]: the routes under `/v1/raft/*` that [`RaftNode::router`] serves.
//!
//! openraft's types stay inside this module: its 0.10 changes the storage
//! and network traits.

mod config;
mod forward;
mod http;
mod leader;
mod network;
mod status;
mod store;

pub use config::RaftConfig;
pub use forward::{ForwardPolicy, Forwarded, ForwardedBy, OPERATOR_TOKEN};
pub use http::PATHS as ROUTER_PATHS;
pub use status::{ProposeError, RaftError, RaftRole, RaftStatus};

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, Weak};
use std::time::{Duration, Instant};

use openraft::error::{InitializeError, RaftError as OpenRaftError};
use openraft::{Raft, RaftMetrics, ServerState};
use redb::Database;
use serde::{Deserialize, Serialize};
use shoal_state::{ApplyError, Command, Entry, Outcome, State};
use tokio::sync::watch;

use leader::{unexpected, LeaderOp, LeaderResult};
use network::{Network, Peers};

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
    /// Whether a forwarded proposal is appended (none until set: refused).
    forward_policy: std::sync::OnceLock<Arc<dyn ForwardPolicy>>,
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
        let client = network::http_client(&config.tls).map_err(RaftError::Config)?;
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
                forward_policy: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Sets who may have a forwarded proposal appended when this node leads
    /// (once; until then none is). Returns `false` when one was set already.
    pub fn set_forward_policy(&self, policy: Arc<dyn ForwardPolicy>) -> bool {
        self.inner.forward_policy.set(policy).is_ok()
    }

    pub(crate) fn forward_policy(&self) -> &dyn ForwardPolicy {
        match self.inner.forward_policy.get() {
            Some(policy) => policy.as_ref(),
            None => &forward::RefuseForwarded,
        }
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
        // Refused here already when this node knows some node reads too old
        // a format (once it has learnt the cluster's format at all): an older
        // leader would refuse it in words of its own, or not decode it.
        let known = self.cluster_log_version();
        if known > shoal_state::LOG_VERSION_FIRST {
            entry
                .clone()
                .appended_by(&self.inner.info.name, known)
                .map_err(ProposeError::MixedVersions)?;
        }
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
