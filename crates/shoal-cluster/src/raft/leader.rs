//! Calls that must run on the leader (writes, read indexes, membership
//! changes): run here when this node leads, else forwarded to the leader,
//! retried while there is none, never sent twice when they may have landed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, RaftError as OpenRaftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use shoal_state::{ApplyError, Entry, Outcome};

use super::network::SendError;
use super::{http, NodeInfo, ProposeError, RaftNode, TypeConfig, LEADER_POLL_MAX};

/// How long a leader waits before it asks a majority again to confirm its
/// leadership for a read.
const READ_INDEX_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// The pause doubles up to this.
const READ_INDEX_RETRY_PAUSE_MAX: Duration = Duration::from_millis(400);

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
    /// Runs `op` on the leader: here if this node leads, else over HTTP.
    /// Retries (within `wait_max`) while there is no leader, the leader moved
    /// or could not be reached, but never resends a command that may have
    /// reached a leader.
    pub(crate) async fn on_leader(&self, op: LeaderOp) -> Result<LeaderResult, ProposeError> {
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
                // openraft gives each voter one heartbeat interval to
                // answer; a moment when a majority answers later (a loaded
                // machine) is no lost quorum, so the leader asks again
                // until the call's time is up.
                let deadline = Instant::now() + timeout;
                let mut pause = READ_INDEX_RETRY_PAUSE;
                loop {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(remaining, raft.get_read_log_id()).await {
                        Ok(Ok((read, _applied))) => {
                            return Ok(LeaderResult::ReadIndex(
                                read.map(|log_id| log_id.index).unwrap_or(0),
                            ))
                        }
                        Ok(Err(OpenRaftError::APIError(CheckIsLeaderError::ForwardToLeader(
                            to,
                        )))) => return Err(LocalError::NotLeader(to.leader_id)),
                        Ok(Err(OpenRaftError::APIError(CheckIsLeaderError::QuorumNotEnough(
                            error,
                        )))) => {
                            if Instant::now() + pause < deadline {
                                tokio::time::sleep(pause).await;
                                pause = (pause * 2).min(READ_INDEX_RETRY_PAUSE_MAX);
                                continue;
                            }
                            return Err(LocalError::Failed(ProposeError::NoQuorum(format!(
                                "leader {id} could not confirm its leadership within {ms} ms: {error}; {}",
                                self.unreachable_voters()
                            ))));
                        }
                        Ok(Err(OpenRaftError::Fatal(error))) => return Err(fatal(error)),
                        Err(_) => {
                            return Err(LocalError::Failed(ProposeError::NoQuorum(format!(
                                "leader {id} could not confirm its leadership with a majority of voters within {ms} ms; {}",
                                self.unreachable_voters()
                            ))))
                        }
                    }
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
}

pub(crate) fn unexpected(result: LeaderResult) -> ProposeError {
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
