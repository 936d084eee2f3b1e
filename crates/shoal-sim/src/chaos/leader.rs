//! Gossip and the leader: each node's gossip record (a `duties::Member`
//! whose liveness moves with virtual time: a node that goes down is
//! suspected, then declared dead; a false suspicion is refuted), the
//! consensus's membership (leader, voters, learners), and the leader's
//! turn: `shoal_sched::duties::leader_duties`, the function the real
//! leader carries out, checked and then carried out on the state and on
//! the simulated consensus.

use std::collections::BTreeSet;

use shoal_sched::duties::{self, Consensus, Duty, DutyBounds, Liveness, Member};
use shoal_state::Command;

use super::Chaos;
use crate::check;

/// How long gossip suspects a member that does not answer before it
/// declares it dead (`suspect_to_down_after`).
pub(super) const SUSPECT_TO_DEAD_MS: u64 = 1_500;
/// The leader forgets a node dead or gone this long (the real default,
/// `FORGET_DEAD_AFTER_DEFAULT_MS`, is 5 minutes; runs here last minutes,
/// so a minute).
const FORGET_AFTER_MS: u64 = 60_000;

/// The bounds the simulated leader waits by.
pub(super) fn bounds() -> DutyBounds {
    DutyBounds {
        forget_after_ms: FORGET_AFTER_MS,
        ..DutyBounds::default()
    }
}

impl Chaos {
    /// Gossip catches up with the truth as time passes: a suspected member
    /// that is up refutes the suspicion, one that is down is declared dead
    /// once the suspicion has lasted long enough.
    pub(super) fn gossip(&mut self) {
        let now_ms = self.cluster.now_ms;
        for node in self.nodes.values_mut() {
            if node.member.status != Liveness::Suspect {
                continue;
            }
            if node.up {
                node.gossip(Liveness::Alive, now_ms);
            } else if now_ms.saturating_sub(node.member.since_ms) >= SUSPECT_TO_DEAD_MS {
                let since_ms = node.member.since_ms + SUSPECT_TO_DEAD_MS;
                node.gossip(Liveness::Dead, since_ms);
            }
        }
    }

    /// The consensus of a cluster that has just been set up: its first node
    /// leads and votes alone.
    pub(super) fn found_consensus(&mut self) -> Result<(), String> {
        let Some(first) = self.nodes.values().next() else {
            return Err("no node to lead".into());
        };
        let id = first.member.raft_id;
        self.consensus = Consensus {
            leader: id,
            voters: BTreeSet::from([id]),
            members: BTreeSet::from([id]),
        };
        Ok(())
    }

    /// The leader's turn: an election if the leader is down, then this
    /// moment's duties, checked, carried out in order, and the consensus
    /// they leave checked.
    pub(super) fn lead(&mut self) -> Result<(), String> {
        self.elect()?;
        let now_ms = self.cluster.now_ms;
        let members: Vec<Member> = self
            .nodes
            .values()
            .map(|node| node.member.clone())
            .collect();
        let duties = duties::leader_duties(
            &self.cluster.state,
            &members,
            &self.consensus,
            &self.bounds,
            now_ms,
        );
        check::check_duties(
            &self.cluster.state,
            &members,
            &self.consensus,
            &self.bounds,
            now_ms,
            &duties,
        )?;
        for duty in duties {
            match duty {
                Duty::AddLearner { id, .. } => {
                    self.consensus.members.insert(id);
                    self.summary.learners += 1;
                }
                Duty::SetNodeStatus { name, status } => {
                    self.apply(Command::SetNodeStatus { name, status })?;
                    self.summary.verdicts += 1;
                }
                Duty::Forget {
                    name,
                    leave_consensus,
                } => {
                    self.apply(Command::ForgetNode { name })?;
                    if let Some(id) = leave_consensus {
                        self.consensus.members.remove(&id);
                    }
                    self.summary.forgets += 1;
                }
                Duty::ChangeVoters { voters, remove } => {
                    self.consensus.voters = voters;
                    for id in &remove {
                        self.consensus.members.remove(id);
                    }
                    self.summary.voter_changes += 1;
                }
            }
        }
        let up: BTreeSet<u64> = self
            .nodes
            .values()
            .filter(|node| node.up)
            .map(|node| node.member.raft_id)
            .collect();
        check::check_consensus(&self.consensus, self.cluster.state.settings.voters_max, &up)
    }

    /// A leader that is down is replaced by a voter that is up, as an
    /// election would. The chaos never takes down a majority of the voters
    /// (`kill_node`), so there is one.
    fn elect(&mut self) -> Result<(), String> {
        let leader = self.consensus.leader;
        if self
            .nodes
            .values()
            .any(|node| node.up && node.member.raft_id == leader)
        {
            return Ok(());
        }
        let candidates: Vec<u64> = self
            .nodes
            .values()
            .filter(|node| node.up && self.consensus.voters.contains(&node.member.raft_id))
            .map(|node| node.member.raft_id)
            .collect();
        let Some(elected) = self.rng.pick(&candidates).copied() else {
            return Err(format!(
                "the leader is down and none of the {} voters is up to take over",
                self.consensus.voters.len()
            ));
        };
        self.consensus.leader = elected;
        self.summary.elections += 1;
        Ok(())
    }

    /// Whether taking `raft_id` down leaves a majority of the voters up.
    pub(super) fn keeps_quorum_without(&self, raft_id: u64) -> bool {
        if !self.consensus.voters.contains(&raft_id) {
            return true;
        }
        let up_after = self
            .nodes
            .values()
            .filter(|node| {
                node.up
                    && node.member.raft_id != raft_id
                    && self.consensus.voters.contains(&node.member.raft_id)
            })
            .count();
        up_after * 2 > self.consensus.voters.len()
    }
}
