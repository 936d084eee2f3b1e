//! What the leader does besides scheduling: it carries out the duties
//! that `shoal_sched::duties` derives from gossip, the consensus and the
//! state. Every node also learns here the newest log format every member
//! of the consensus reads.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_cluster::membership::{Member, MemberStatus};
use shoal_cluster::raft::RaftStatus;
use shoal_sched::duties::{self, Consensus, Duty, DutyBounds, Liveness};
use shoal_state::security::Security;
use shoal_state::Command;
use shoal_types::{consensus_id, NodeStatus};

use super::Shared;
use crate::clock::now_ms;

/// How often the leader looks at membership when nothing changes.
const DUTIES_INTERVAL: Duration = Duration::from_millis(500);

pub async fn run<R: Send + Sync + 'static>(shared: std::sync::Arc<Shared<R>>) {
    let mut changes = shared.membership.subscribe();
    loop {
        shared
            .raft
            .set_cluster_log_version(cluster_log_version(&shared));
        if shared.is_leader() {
            if let Err(error) = pass(&shared).await {
                tracing::debug!(%error, "leader duties");
            }
        }
        let _ = tokio::time::timeout(DUTIES_INTERVAL, changes.changed()).await;
    }
}

/// The newest log format every member of the consensus (voters and
/// learners) and every node the state holds as alive or suspect reads,
/// from their gossiped facts; one whose facts are not known yet counts as
/// one of the first release. The state's nodes count too because a node
/// that has just started may see the consensus without them for a moment
/// (its metrics not loaded, a membership change in flight), and an entry
/// appended in a format they cannot read would halt them.
fn cluster_log_version<R>(shared: &Shared<R>) -> u32 {
    let state = shared.raft.read();
    // Only a node the cluster admitted, under its own consensus id, speaks
    // for the format it reads.
    let facts: BTreeMap<u64, u32> = shared
        .membership
        .members()
        .iter()
        .filter(|member| admitted(&state.security, &member.facts.name, member.facts.raft_id))
        .map(|member| (member.facts.raft_id, member.facts.log_version_read()))
        .chain(std::iter::once((
            consensus_id(&shared.config.name),
            super::gossip_keys::log_version_read(shared.membership.sealing().keyring.is_some()),
        )))
        .collect();
    let registered: Vec<u64> = state
        .nodes
        .values()
        .filter(|node| matches!(node.status, NodeStatus::Alive | NodeStatus::Suspect))
        .map(|node| consensus_id(&node.name))
        .collect();
    shared
        .raft
        .status()
        .nodes
        .keys()
        .copied()
        .chain(registered)
        .map(|id| {
            facts
                .get(&id)
                .copied()
                .unwrap_or(shoal_state::LOG_VERSION_FIRST)
        })
        .min()
        .unwrap_or(shoal_state::LOG_VERSION_FIRST)
}

/// Whether a gossip member named `name` with consensus id `raft_id` is a
/// node the cluster admitted (`shoal node rm` takes the admission away),
/// under its own id. Gossip's members are the members' own word: only such
/// a member is made a learner or counts toward the cluster's log format.
fn admitted(security: &Security, name: &str, raft_id: u64) -> bool {
    raft_id == consensus_id(name) && security.admissions.contains_key(name)
}

/// The learners the cluster no longer admits (removed with `shoal node
/// rm`): they leave the consensus, so that they get the log no more.
fn removed_learners(status: &RaftStatus, security: &Security) -> BTreeSet<u64> {
    status
        .learners
        .iter()
        .copied()
        .filter(|id| *id != status.node_id)
        .filter(|id| {
            status
                .nodes
                .get(id)
                .is_some_and(|node| !admitted(security, &node.name, *id))
        })
        .collect()
}

/// A gossip member as the duties see it.
fn member(member: &Member, security: &shoal_state::security::Security) -> duties::Member {
    duties::Member {
        may_vote: security
            .admissions
            .get(&member.facts.name)
            .is_some_and(|admission| admission.role == shoal_state::security::NodeRole::Voter),
        name: member.facts.name.clone(),
        raft_id: member.facts.raft_id,
        api_addr: member.facts.api_addr.clone(),
        zone: member.facts.labels.get("zone").cloned().unwrap_or_default(),
        status: match member.status {
            MemberStatus::Alive => Liveness::Alive,
            MemberStatus::Suspect => Liveness::Suspect,
            MemberStatus::Dead => Liveness::Dead,
            MemberStatus::Left => Liveness::Left,
        },
        since_ms: member.since_ms,
    }
}

/// Carries out this moment's duties, in order; the first that fails ends
/// the pass (the next pass derives them again).
async fn pass<R>(shared: &Shared<R>) -> anyhow::Result<()> {
    let now = now_ms();
    let members: Vec<duties::Member> = {
        let state = shared.raft.read();
        shared
            .membership
            .members()
            .iter()
            .map(|m| member(m, &state.security))
            .collect()
    };
    let status = shared.raft.status();
    let consensus = Consensus {
        leader: shared.node_id(),
        voters: status.voters.clone(),
        members: status.nodes.keys().copied().collect(),
    };
    let bounds = DutyBounds {
        forget_after_ms: shared.config.forget_dead_after.as_millis() as u64,
        gossip_started_ms: shared.started_at_ms,
        ..DutyBounds::default()
    };
    let (duties, removed) = {
        let state = shared.raft.read();
        let mut duties = duties::leader_duties(&state, &members, &consensus, &bounds, now);
        duties.retain(|duty| match duty {
            Duty::AddLearner { id, name, .. } => {
                let ok = admitted(&state.security, name, *id);
                if !ok {
                    tracing::debug!(node = %name, "not made a learner: the cluster has not admitted it");
                }
                ok
            }
            _ => true,
        });
        (duties, removed_learners(&status, &state.security))
    };
    if !removed.is_empty() {
        tracing::info!(learners = ?removed, "removed nodes leave the consensus");
        shared.raft.remove_nodes(removed).await?;
    }
    for duty in duties {
        match duty {
            Duty::AddLearner { id, name, api_addr } => {
                tracing::info!(node = %name, "admitting a new node as a learner");
                shared.raft.add_learner(id, name, api_addr).await?;
            }
            Duty::SetNodeStatus { name, status } => {
                tracing::info!(node = %name, status = status.as_str(), "node status");
                shared
                    .raft
                    .propose(now, Command::SetNodeStatus { name, status })
                    .await?;
            }
            Duty::Forget {
                name,
                leave_consensus,
            } => {
                shared
                    .raft
                    .propose(now, Command::ForgetNode { name })
                    .await?;
                if let Some(id) = leave_consensus {
                    shared.raft.remove_nodes(BTreeSet::from([id])).await?;
                }
            }
            Duty::ChangeVoters { voters, remove } => {
                tracing::info!(wanted = ?voters, current = ?consensus.voters, "changing voters");
                shared.raft.change_voters(voters).await?;
                if !remove.is_empty() {
                    shared.raft.remove_nodes(remove).await?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use shoal_cluster::raft::{NodeInfo, RaftRole};
    use shoal_state::security::{Admission, NodeRole};

    use super::*;

    fn security(names: &[&str]) -> Security {
        let mut security = Security::default();
        for name in names {
            security.admissions.insert(
                name.to_string(),
                Admission {
                    role: NodeRole::Worker,
                    admission: format!("adm-{name}"),
                    admitted_at_ms: 1,
                    token: String::new(),
                    facts_key: String::new(),
                },
            );
        }
        security
    }

    #[test]
    fn only_admitted_members_under_their_own_id_are_trusted() {
        let security = security(&["a", "b"]);
        assert!(admitted(&security, "a", consensus_id("a")));
        assert!(!admitted(&security, "a", consensus_id("b")), "another's id");
        assert!(
            !admitted(&security, "c", consensus_id("c")),
            "never admitted"
        );

        let node = |name: &str| NodeInfo {
            name: name.into(),
            api_addr: format!("{name}:7950"),
        };
        let status = RaftStatus {
            node_id: consensus_id("a"),
            leader: Some(consensus_id("a")),
            role: RaftRole::Leader,
            term: 1,
            last_applied: 1,
            voters: BTreeSet::from([consensus_id("a")]),
            learners: BTreeSet::from([consensus_id("b"), consensus_id("c")]),
            nodes: ["a", "b", "c"]
                .into_iter()
                .map(|name| (consensus_id(name), node(name)))
                .collect(),
        };
        // c was removed (its admission is gone): it leaves; b stays.
        assert_eq!(
            removed_learners(&status, &security),
            BTreeSet::from([consensus_id("c")])
        );
        assert!(removed_learners(&status, &self::security(&["a", "b", "c"])).is_empty());
    }
}
