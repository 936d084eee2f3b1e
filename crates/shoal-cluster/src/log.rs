//! The replicated log as the node's loops use it: propose a command, read
//! the applied state, hear of each apply. [`RaftNode`] is the real one;
//! [`MemoryLog`] applies at once in memory, for tests of those loops.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use shoal_state::{Command, Entry, Outcome, State, LOG_VERSION};
use tokio::sync::watch;

use crate::raft::{NodeInfo, ProposeError, RaftNode, RaftRole, RaftStatus};

pub trait ReplicatedLog: Send + Sync + 'static {
    /// Appends `command` (stamped with the proposer's clock) and returns
    /// what applying it did.
    fn propose(
        &self,
        at_ms: u64,
        command: Command,
    ) -> impl Future<Output = Result<Outcome, ProposeError>> + Send;
    /// The local applied state; hold it briefly.
    fn read(&self) -> RwLockReadGuard<'_, State>;
    /// Changes whenever an entry is applied (the value is its index).
    fn subscribe(&self) -> watch::Receiver<u64>;
    /// Returns once `read()` reflects every write acknowledged before.
    fn linearizable_read(&self) -> impl Future<Output = Result<(), ProposeError>> + Send;
    /// This node's view of the consensus.
    fn status(&self) -> RaftStatus;
    /// The newest log format every node of the cluster reads.
    fn cluster_log_version(&self) -> u32;

    /// Whether this node leads the cluster now.
    fn leads(&self) -> bool {
        let status = self.status();
        status.leader == Some(status.node_id)
    }
}

/// What the leader's duties change in the consensus itself, beside the
/// entries they append: its learners and voters, and the log format the
/// cluster writes.
pub trait ConsensusChanges: ReplicatedLog {
    /// Adds a node as a learner (it gets the log, does not vote).
    fn add_learner(
        &self,
        id: u64,
        name: String,
        api_addr: String,
    ) -> impl Future<Output = Result<(), ProposeError>> + Send;
    /// Makes `voters` the voters; each must be a member already.
    fn change_voters(
        &self,
        voters: BTreeSet<u64>,
    ) -> impl Future<Output = Result<(), ProposeError>> + Send;
    /// Drops nodes from the consensus, voters or learners.
    fn remove_nodes(
        &self,
        ids: BTreeSet<u64>,
    ) -> impl Future<Output = Result<(), ProposeError>> + Send;
    /// The newest format every node reads, as the duties learned it from
    /// the members' facts; entries are written in it from now on.
    fn set_cluster_log_version(&self, format: u32);
}

impl ConsensusChanges for RaftNode {
    async fn add_learner(
        &self,
        id: u64,
        name: String,
        api_addr: String,
    ) -> Result<(), ProposeError> {
        RaftNode::add_learner(self, id, name, api_addr).await
    }
    async fn change_voters(&self, voters: BTreeSet<u64>) -> Result<(), ProposeError> {
        RaftNode::change_voters(self, voters).await
    }
    async fn remove_nodes(&self, ids: BTreeSet<u64>) -> Result<(), ProposeError> {
        RaftNode::remove_nodes(self, ids).await
    }
    fn set_cluster_log_version(&self, format: u32) {
        RaftNode::set_cluster_log_version(self, format);
    }
}

/// A change of the consensus a [`MemoryLog`] was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsensusChange {
    AddLearner { id: u64, name: String },
    ChangeVoters(BTreeSet<u64>),
    RemoveNodes(BTreeSet<u64>),
}

impl ReplicatedLog for RaftNode {
    async fn propose(&self, at_ms: u64, command: Command) -> Result<Outcome, ProposeError> {
        RaftNode::propose(self, at_ms, command).await
    }
    fn read(&self) -> RwLockReadGuard<'_, State> {
        RaftNode::read(self)
    }
    fn subscribe(&self) -> watch::Receiver<u64> {
        RaftNode::subscribe(self)
    }
    async fn linearizable_read(&self) -> Result<(), ProposeError> {
        RaftNode::linearizable_read(self).await
    }
    fn status(&self) -> RaftStatus {
        RaftNode::status(self)
    }
    fn cluster_log_version(&self) -> u32 {
        RaftNode::cluster_log_version(self)
    }
}

/// A log of one node that applies each proposal at once, in this build's
/// format; it can be told to refuse proposals, as a cluster without a
/// leader does.
#[derive(Clone)]
pub struct MemoryLog {
    inner: Arc<MemoryInner>,
}

struct MemoryInner {
    node: String,
    state: RwLock<State>,
    applied: watch::Sender<u64>,
    /// Set: proposals fail with this (no leader, say).
    refuse: Mutex<Option<ProposeError>>,
    /// Every command proposed and applied, in order.
    commands: Mutex<Vec<Command>>,
    /// Every change of the consensus asked for, in order.
    changes: Mutex<Vec<ConsensusChange>>,
    /// The format the cluster reads, as last set.
    format: AtomicU32,
}

impl MemoryLog {
    /// A log of `node`, which proposes and leads.
    pub fn new(node: &str, state: State) -> MemoryLog {
        let (applied, _) = watch::channel(state.applied_index);
        MemoryLog {
            inner: Arc::new(MemoryInner {
                node: node.to_string(),
                state: RwLock::new(state),
                applied,
                refuse: Mutex::new(None),
                commands: Mutex::new(Vec::new()),
                changes: Mutex::new(Vec::new()),
                format: AtomicU32::new(LOG_VERSION),
            }),
        }
    }

    /// From now on proposals fail with `error` (or succeed again: `None`).
    pub fn refuse(&self, error: Option<ProposeError>) {
        *self
            .inner
            .refuse
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = error;
    }

    /// The commands applied so far.
    pub fn commands(&self) -> Vec<Command> {
        self.inner
            .commands
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The changes of the consensus asked for so far (none is made: the
    /// log stays one node that leads).
    pub fn consensus_changes(&self) -> Vec<ConsensusChange> {
        self.inner
            .changes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn change(&self, change: ConsensusChange) -> Result<(), ProposeError> {
        if let Some(error) = self.refused() {
            return Err(error);
        }
        self.inner
            .changes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(change);
        Ok(())
    }

    /// Applies `command` as if another node (or the leader) proposed it.
    pub fn apply(&self, command: Command) -> Outcome {
        let proposer = command.writer().unwrap_or(&self.inner.node).to_string();
        self.append(&proposer, 0, command)
            .expect("a command for the memory log applies")
    }

    fn refused(&self) -> Option<ProposeError> {
        self.inner
            .refuse
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn append(
        &self,
        proposer: &str,
        at_ms: u64,
        command: Command,
    ) -> Result<Outcome, ProposeError> {
        let mut entry = Entry::proposed(at_ms, proposer, &command);
        entry
            .appended_by(&self.inner.node, LOG_VERSION)
            .map_err(ProposeError::MixedVersions)?;
        let mut state = self
            .inner
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let index = state.applied_index + 1;
        let outcome = state.apply(index, &entry).map_err(ProposeError::Rejected);
        let applied = state.applied_index;
        drop(state);
        self.inner
            .commands
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(command);
        self.inner.applied.send_replace(applied);
        outcome
    }
}

impl ReplicatedLog for MemoryLog {
    async fn propose(&self, at_ms: u64, command: Command) -> Result<Outcome, ProposeError> {
        if let Some(error) = self.refused() {
            return Err(error);
        }
        let node = self.inner.node.clone();
        self.append(&node, at_ms, command)
    }
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.inner
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }
    async fn linearizable_read(&self) -> Result<(), ProposeError> {
        self.refused().map_or(Ok(()), Err)
    }
    /// A cluster of this one node, which leads.
    fn status(&self) -> RaftStatus {
        let id = shoal_types::consensus_id(&self.inner.node);
        RaftStatus {
            node_id: id,
            leader: Some(id),
            role: RaftRole::Leader,
            term: 1,
            last_applied: self.read().applied_index,
            voters: [id].into(),
            learners: Default::default(),
            nodes: [(
                id,
                NodeInfo {
                    name: self.inner.node.clone(),
                    api_addr: String::new(),
                },
            )]
            .into(),
        }
    }
    fn cluster_log_version(&self) -> u32 {
        self.inner.format.load(Ordering::Relaxed)
    }
}

impl ConsensusChanges for MemoryLog {
    async fn add_learner(
        &self,
        id: u64,
        name: String,
        _api_addr: String,
    ) -> Result<(), ProposeError> {
        self.change(ConsensusChange::AddLearner { id, name })
    }
    async fn change_voters(&self, voters: BTreeSet<u64>) -> Result<(), ProposeError> {
        self.change(ConsensusChange::ChangeVoters(voters))
    }
    async fn remove_nodes(&self, ids: BTreeSet<u64>) -> Result<(), ProposeError> {
        self.change(ConsensusChange::RemoveNodes(ids))
    }
    fn set_cluster_log_version(&self, format: u32) {
        self.inner.format.store(
            format.clamp(shoal_state::LOG_VERSION_FIRST, LOG_VERSION),
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn applies_at_once_and_refuses_when_told() {
        let log = MemoryLog::new("n1", State::default());
        let applied = log.subscribe();
        let command = Command::SetSettings {
            voters_max: Some(3),
            cluster_cidr: None,
            node_prefix_len: None,
            dns_zone: None,
        };
        assert_eq!(
            log.propose(1, command.clone()).await,
            Ok(Outcome::SettingsSet)
        );
        assert!(applied.has_changed().unwrap_or(false));
        assert_eq!(log.read().settings.voters_max, 3);
        log.refuse(Some(ProposeError::NoLeader("test".into())));
        assert!(log.propose(2, command).await.is_err());
        assert_eq!(log.commands().len(), 1);
    }
}
