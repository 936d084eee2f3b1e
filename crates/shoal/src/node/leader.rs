//! What the leader does besides scheduling: it carries out the duties
//! that `shoal_sched::duties` derives from gossip, the consensus and the
//! state. Every node also learns here the newest log format every member
//! of the consensus reads. The loop runs over any [`ConsensusChanges`]
//! and a [`Gossip`] view, so its tests drive it over a `MemoryLog`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_cluster::log::ConsensusChanges;
use shoal_cluster::membership::{Member, MemberStatus};
use shoal_cluster::raft::RaftStatus;
use shoal_sched::duties::{self, Consensus, Duty, DutyBounds, Liveness};
use shoal_state::security::Security;
use shoal_state::Command;
use shoal_types::{consensus_id, NodeStatus};
use tokio::sync::watch;

use super::Shared;
use crate::clock::now_ms;

/// How often the leader looks at membership when nothing changes.
const DUTIES_INTERVAL: Duration = Duration::from_millis(500);

/// What the duties loop hears from gossip.
pub struct Gossip<M, F> {
    /// The members as gossip knows them now.
    pub members: M,
    /// The log format this node reads (it rises with its keyring).
    pub own_format: F,
    /// Changes whenever membership does.
    pub changes: watch::Receiver<u64>,
}

/// This node's own settings the duties use.
pub struct Settings {
    pub name: String,
    /// A node dead or gone this long is forgotten.
    pub forget_after: Duration,
    /// When this node's gossip started (ms since the epoch).
    pub gossip_started_ms: u64,
}

pub async fn run<R: Send + Sync + 'static>(shared: std::sync::Arc<Shared<R>>) {
    let (members, sealing) = (shared.clone(), shared.clone());
    let gossip = Gossip {
        members: move || members.membership.members(),
        own_format: move || {
            super::gossip_keys::log_version_read(sealing.membership.sealing().keyring.is_some())
        },
        changes: shared.membership.subscribe(),
    };
    let settings = Settings {
        name: shared.config.name.clone(),
        forget_after: shared.config.forget_dead_after,
        gossip_started_ms: shared.started_at_ms,
    };
    duties_loop(shared.raft.clone(), gossip, settings).await;
}

/// Learns the cluster's format, and carries out the duties while this
/// node leads, for good.
pub async fn duties_loop<L, M, F>(log: L, mut gossip: Gossip<M, F>, settings: Settings)
where
    L: ConsensusChanges,
    M: Fn() -> Vec<Member>,
    F: Fn() -> u32,
{
    loop {
        let members = (gossip.members)();
        let consensus: Vec<u64> = log.status().nodes.keys().copied().collect();
        let format = cluster_log_version(
            &log.read(),
            &members,
            consensus.into_iter(),
            (consensus_id(&settings.name), (gossip.own_format)()),
        );
        log.set_cluster_log_version(format);
        if log.leads() {
            if let Err(error) = pass(&log, &members, &settings).await {
                tracing::debug!(%error, "leader duties");
            }
        }
        let _ = tokio::time::timeout(DUTIES_INTERVAL, gossip.changes.changed()).await;
    }
}

/// The newest log format every member of the consensus (voters and
/// learners) and every node the state holds as alive or suspect reads,
/// from their gossiped facts; one whose facts are not known yet counts as
/// one of the first release. The state's nodes count too because a node
/// that has just started may see the consensus without them for a moment
/// (its metrics not loaded, a membership change in flight), and an entry
/// appended in a format they cannot read would halt them.
/// `consensus`: the ids of the consensus's members; `own`: this node's id
/// and the format it reads.
fn cluster_log_version(
    state: &shoal_state::State,
    members: &[Member],
    consensus: impl Iterator<Item = u64>,
    own: (u64, u32),
) -> u32 {
    // Only a node the cluster admitted, under its own consensus id, speaks
    // for the format it reads.
    let facts: BTreeMap<u64, u32> = members
        .iter()
        .filter(|member| admitted(&state.security, &member.facts.name, member.facts.raft_id))
        .map(|member| (member.facts.raft_id, member.facts.log_version_read()))
        .chain(std::iter::once(own))
        .collect();
    let registered: Vec<u64> = state
        .nodes
        .values()
        .filter(|node| matches!(node.status, NodeStatus::Alive | NodeStatus::Suspect))
        .map(|node| consensus_id(&node.name))
        .collect();
    consensus
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
async fn pass<L: ConsensusChanges>(
    log: &L,
    members: &[Member],
    settings: &Settings,
) -> anyhow::Result<()> {
    let now = now_ms();
    let members: Vec<duties::Member> = {
        let state = log.read();
        members.iter().map(|m| member(m, &state.security)).collect()
    };
    let status = log.status();
    let consensus = Consensus {
        leader: consensus_id(&settings.name),
        voters: status.voters.clone(),
        members: status.nodes.keys().copied().collect(),
    };
    let bounds = DutyBounds {
        forget_after_ms: u64::try_from(settings.forget_after.as_millis()).unwrap_or(u64::MAX),
        gossip_started_ms: settings.gossip_started_ms,
        ..DutyBounds::default()
    };
    let (duties, removed) = {
        let state = log.read();
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
        log.remove_nodes(removed).await?;
    }
    for duty in duties {
        match duty {
            Duty::AddLearner { id, name, api_addr } => {
                tracing::info!(node = %name, "admitting a new node as a learner");
                log.add_learner(id, name, api_addr).await?;
            }
            Duty::SetNodeStatus { name, status } => {
                tracing::info!(node = %name, status = status.as_str(), "node status");
                log.propose(now, Command::SetNodeStatus { name, status })
                    .await?;
            }
            Duty::Forget {
                name,
                leave_consensus,
            } => {
                log.propose(now, Command::ForgetNode { name }).await?;
                if let Some(id) = leave_consensus {
                    log.remove_nodes(BTreeSet::from([id])).await?;
                }
            }
            Duty::ChangeVoters { voters, remove } => {
                tracing::info!(wanted = ?voters, current = ?consensus.voters, "changing voters");
                log.change_voters(voters).await?;
                if !remove.is_empty() {
                    log.remove_nodes(remove).await?;
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

    fn member(name: &str, raft_id: u64, log_version: u32) -> Member {
        Member {
            facts: shoal_cluster::membership::NodeFacts {
                name: name.into(),
                raft_id,
                log_version,
                ..Default::default()
            },
            gossip_addr: "127.0.0.1:7946".parse().unwrap(),
            status: MemberStatus::Alive,
            since_ms: 0,
        }
    }

    /// The format every member of the consensus and every node the state
    /// holds alive or suspect reads, by what each gossips, counting only
    /// admitted members under their own ids, and a node not heard from as
    /// one of the first release.
    #[test]
    fn the_clusters_format_is_the_oldest_any_node_that_counts_reads() {
        let mut state = shoal_state::State {
            security: security(&["a", "b", "c"]),
            ..Default::default()
        };
        let (a, b, c) = (consensus_id("a"), consensus_id("b"), consensus_id("c"));
        let own = (a, 9);
        let format = |state: &shoal_state::State, members: &[Member], consensus: &[u64]| {
            cluster_log_version(state, members, consensus.iter().copied(), own)
        };
        let both = [member("b", b, 9), member("c", c, 8)];
        // (members heard, consensus) -> format
        for (members, consensus, wanted) in [
            (&both[..], &[a, b][..], 9),
            (&both[..], &[a, b, c][..], 8),
            // A member of the consensus not heard from counts as format 1.
            (&both[..1], &[a, b, c][..], 1),
            // Alone.
            (&[][..], &[a][..], 9),
        ] {
            assert_eq!(format(&state, members, consensus), wanted, "{consensus:?}");
        }
        // Gossip under another's id, or from a node not admitted, does not
        // speak: b's seat is counted as unheard.
        let impostor = [member("b", c, 9), member("x", b, 9)];
        assert_eq!(format(&state, &impostor, &[a, b]), 1);
        // A node the state holds alive counts even outside the consensus;
        // a dead one does not.
        let node = |name: &str, status| shoal_types::Node {
            name: name.into(),
            addr: String::new(),
            os: String::new(),
            arch: String::new(),
            cpus: 1,
            memory_total_bytes: 1,
            cpu_allocatable_millis: 1,
            memory_allocatable_bytes: 1,
            labels: BTreeMap::new(),
            started_at_ms: 0,
            status,
            taints: Vec::new(),
            drain: false,
            subnet: None,
            allows: shoal_types::Allows::default(),
        };
        state.nodes.insert("c".into(), node("c", NodeStatus::Alive));
        assert_eq!(format(&state, &both, &[a, b]), 8);
        state.nodes.insert("c".into(), node("c", NodeStatus::Dead));
        assert_eq!(format(&state, &both, &[a, b]), 9);
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

    /// The loop over a one-node `MemoryLog`: it learns the format from the
    /// members that count, admits as learners only admitted members, and
    /// declares a member gossip holds dead.
    #[tokio::test]
    async fn the_duties_loop_runs_over_a_memory_log() {
        use shoal_cluster::log::{ConsensusChange, MemoryLog, ReplicatedLog};
        let mut state = shoal_state::State {
            security: security(&["n2", "n3"]),
            ..Default::default()
        };
        state.security.admissions.insert(
            "n1".into(),
            Admission {
                role: NodeRole::Voter,
                admission: "adm-n1".into(),
                admitted_at_ms: 1,
                token: String::new(),
                facts_key: String::new(),
            },
        );
        for name in ["n1", "n2"] {
            state.nodes.insert(
                name.into(),
                shoal_types::Node::sample(name, &format!("{name}:7950")),
            );
        }
        let log = MemoryLog::new("n1", state);
        let now = now_ms();
        let mut dead = member("n2", consensus_id("n2"), shoal_state::LOG_VERSION);
        dead.status = MemberStatus::Dead;
        dead.since_ms = now.saturating_sub(60_000);
        let members = vec![
            member("n1", consensus_id("n1"), shoal_state::LOG_VERSION),
            dead,
            member("n3", consensus_id("n3"), shoal_state::LOG_VERSION),
            // Gossip's word only: not admitted.
            member("n4", consensus_id("n4"), shoal_state::LOG_VERSION),
        ];
        let (_tell, changes) = watch::channel(0u64);
        let gossip = Gossip {
            members: move || members.clone(),
            own_format: || shoal_state::LOG_VERSION - 1,
            changes,
        };
        let settings = Settings {
            name: "n1".into(),
            forget_after: Duration::from_secs(3600),
            gossip_started_ms: now.saturating_sub(120_000),
        };
        let running = tokio::spawn(duties_loop(log.clone(), gossip, settings));
        let started = std::time::Instant::now();
        loop {
            let dead = log.read().nodes["n2"].status == NodeStatus::Dead;
            let learners: Vec<String> = log
                .consensus_changes()
                .into_iter()
                .filter_map(|change| match change {
                    ConsensusChange::AddLearner { name, .. } => Some(name),
                    _ => None,
                })
                .collect();
            if dead && !learners.is_empty() {
                assert_eq!(learners, ["n3"], "{:?}", log.consensus_changes());
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "n2 dead: {dead}; changes: {:?}",
                log.consensus_changes()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // This node reads one format less than the newest: the cluster's.
        assert_eq!(log.cluster_log_version(), shoal_state::LOG_VERSION - 1);
        running.abort();
    }
}
