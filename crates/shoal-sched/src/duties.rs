//! What the leader does besides scheduling, as a pure function: from the
//! gossip view of the members, the consensus's membership and the state,
//! the duties to carry out (admit learners, record gossip's verdicts,
//! forget nodes gone for long, keep the voter count). The node carries
//! them out in order; the simulator drives and checks the same function.

use std::collections::{BTreeMap, BTreeSet};

use shoal_state::State;
use shoal_types::NodeStatus;

/// A member as gossip sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub raft_id: u64,
    pub api_addr: String,
    /// The `zone` label, empty when unset: voters spread over zones.
    pub zone: String,
    pub status: Liveness,
    /// When this node saw the member enter `status` (ms since the epoch).
    pub since_ms: u64,
    /// Whether the cluster admitted it as one that may vote (a worker
    /// never does, whatever else is true of it).
    pub may_vote: bool,
}

/// Gossip's view of a member's liveness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// Missed probes; not enough to move work.
    Suspect,
    Dead,
    /// Left on purpose.
    Left,
}

/// The consensus's membership as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consensus {
    pub leader: u64,
    pub voters: BTreeSet<u64>,
    /// Voters and learners.
    pub members: BTreeSet<u64>,
}

/// How long the leader waits before acting on gossip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DutyBounds {
    /// Gossip's "dead" must hold this long before work moves: a node that
    /// refutes a stale suspicion comes back under a new identity, and the
    /// old one is briefly seen dead.
    pub dead_confirm_ms: u64,
    /// A voter declared dead this long ago is replaced.
    pub voter_dead_grace_ms: u64,
    /// A node dead or gone this long is forgotten, with its tasks.
    pub forget_after_ms: u64,
    /// When this leader's gossip started, and how long after that a voter
    /// gossip has not told about keeps its seat (its facts may be on the
    /// way); after that it is treated as gone.
    pub gossip_started_ms: u64,
    pub unknown_voter_grace_ms: u64,
}

impl Default for DutyBounds {
    fn default() -> Self {
        DutyBounds {
            dead_confirm_ms: 500,
            voter_dead_grace_ms: 2_000,
            forget_after_ms: shoal_types::node::FORGET_DEAD_AFTER_DEFAULT_MS,
            gossip_started_ms: 0,
            unknown_voter_grace_ms: 30_000,
        }
    }
}

/// One thing for the leader to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Duty {
    /// A live member not in the consensus joins it as a learner.
    AddLearner {
        id: u64,
        name: String,
        api_addr: String,
    },
    /// Gossip's verdict becomes the node's recorded status.
    SetNodeStatus { name: String, status: NodeStatus },
    /// Forget the node and its tasks; a learner also leaves the consensus.
    Forget {
        name: String,
        leave_consensus: Option<u64>,
    },
    /// Make `voters` the voters, then drop `remove` (departed voters) from
    /// the consensus.
    ChangeVoters {
        voters: BTreeSet<u64>,
        remove: BTreeSet<u64>,
    },
}

/// The leader's duties now, in the order to carry them out.
pub fn leader_duties(
    state: &State,
    members: &[Member],
    consensus: &Consensus,
    bounds: &DutyBounds,
    now_ms: u64,
) -> Vec<Duty> {
    let mut duties = Vec::new();
    // 1. Live members not yet in the consensus join it as learners.
    for member in members {
        let live = matches!(member.status, Liveness::Alive | Liveness::Suspect);
        if live && !member.name.is_empty() && !consensus.members.contains(&member.raft_id) {
            duties.push(Duty::AddLearner {
                id: member.raft_id,
                name: member.name.clone(),
                api_addr: member.api_addr.clone(),
            });
        }
    }
    // 2. Gossip's verdicts become node statuses (suspicion is not enough to
    // move work).
    for member in members {
        let wanted = match member.status {
            Liveness::Alive | Liveness::Suspect => NodeStatus::Alive,
            Liveness::Dead if now_ms.saturating_sub(member.since_ms) >= bounds.dead_confirm_ms => {
                NodeStatus::Dead
            }
            Liveness::Dead => continue,
            Liveness::Left => NodeStatus::Left,
        };
        if state
            .nodes
            .get(&member.name)
            .is_some_and(|node| node.status != wanted)
        {
            duties.push(Duty::SetNodeStatus {
                name: member.name.clone(),
                status: wanted,
            });
        }
    }
    // Nodes gossip has forgotten, or dead for long: forget them too.
    let gossiped: BTreeSet<&str> = members.iter().map(|member| member.name.as_str()).collect();
    for (name, node) in &state.nodes {
        let stale = members
            .iter()
            .find(|member| &member.name == name)
            .is_some_and(|member| {
                member.status != Liveness::Alive
                    && now_ms.saturating_sub(member.since_ms) > bounds.forget_after_ms
            });
        if node.status != NodeStatus::Alive && (stale || !gossiped.contains(name.as_str())) {
            let id = shoal_types::consensus_id(name);
            let learner = consensus.members.contains(&id) && !consensus.voters.contains(&id);
            duties.push(Duty::Forget {
                name: name.clone(),
                leave_consensus: learner.then_some(id),
            });
        }
    }
    // 3. Voters: replace dead ones, add learners up to the target, spread
    // over zones, as many as the cluster setting allows.
    let wanted = choose_voters(
        consensus.leader,
        &consensus.voters,
        &consensus.members,
        members,
        state.settings.voters_max as usize,
        bounds,
        now_ms,
    );
    if wanted != consensus.voters {
        let remove = consensus
            .voters
            .difference(&wanted)
            .copied()
            .filter(|id| {
                !members
                    .iter()
                    .any(|m| m.raft_id == *id && m.status == Liveness::Alive)
            })
            .collect();
        duties.push(Duty::ChangeVoters {
            voters: wanted,
            remove,
        });
    }
    duties
}

/// The voters the cluster should have: every live voter stays; dead ones
/// (dead for longer than a grace) go; live learners are promoted, in zones
/// that have fewest voters first, until the target is met. The target is 1
/// or 2 with that many nodes, 3 from 3 nodes on, 5 from 5 on (at most
/// `voters_max`).
pub fn choose_voters(
    leader: u64,
    voters: &BTreeSet<u64>,
    in_consensus: &BTreeSet<u64>,
    members: &[Member],
    voters_max: usize,
    bounds: &DutyBounds,
    now_ms: u64,
) -> BTreeSet<u64> {
    let voter_dead_grace_ms = bounds.voter_dead_grace_ms;
    let keep_unknown =
        now_ms.saturating_sub(bounds.gossip_started_ms) < bounds.unknown_voter_grace_ms;
    let by_id: BTreeMap<u64, &Member> = members
        .iter()
        .map(|member| (member.raft_id, member))
        .collect();
    let live = |id: &u64| {
        *id == leader
            || by_id
                .get(id)
                .is_some_and(|m| matches!(m.status, Liveness::Alive | Liveness::Suspect))
    };
    let gone = |id: &u64| {
        *id != leader
            && by_id.get(id).is_some_and(|m| {
                matches!(m.status, Liveness::Dead | Liveness::Left)
                    && (m.status == Liveness::Left
                        || now_ms.saturating_sub(m.since_ms) >= voter_dead_grace_ms)
            })
    };
    let live_count = in_consensus.iter().filter(|id| live(id)).count();
    let target = match live_count {
        0..=2 => live_count.max(1),
        3 | 4 => 3,
        _ => 5,
    }
    .min(voters_max.max(1));
    let may_vote = |id: &u64| *id == leader || by_id.get(id).is_some_and(|m| m.may_vote);
    // A voter gossip has not told about yet keeps its seat while the
    // leader's gossip is young (a leader that has just started, before the
    // others' facts arrive): what is not known yet is neither gone nor
    // barred from voting. Past that grace, unknown is gone.
    let unknown = |id: &u64| keep_unknown && !by_id.contains_key(id);
    let mut chosen: BTreeSet<u64> = voters
        .iter()
        .copied()
        .filter(|id| !gone(id) && (may_vote(id) || unknown(id)))
        .collect();
    let zone = |id: &u64| -> String { by_id.get(id).map(|m| m.zone.clone()).unwrap_or_default() };
    let mut candidates: Vec<u64> = in_consensus
        .iter()
        .copied()
        .filter(|id| {
            !chosen.contains(id)
                && live(id)
                && may_vote(id)
                && by_id.get(id).is_some_and(|m| m.status == Liveness::Alive)
        })
        .collect();
    while chosen.len() < target && !candidates.is_empty() {
        let mut zones: BTreeMap<String, usize> = BTreeMap::new();
        for id in &chosen {
            *zones.entry(zone(id)).or_default() += 1;
        }
        candidates.sort_by_key(|id| {
            let name = by_id.get(id).map(|m| m.name.clone()).unwrap_or_default();
            (zones.get(&zone(id)).copied().unwrap_or(0), name)
        });
        let pick = candidates.remove(0);
        chosen.insert(pick);
    }
    // More than the setting allows (it went down): voters that do not answer
    // step down first, then the most crowded zone gives one up; never the
    // leader. Fewer live nodes never demote anyone: that would cost quorum.
    while chosen.len() > voters_max.max(1) {
        let mut zones: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for id in &chosen {
            zones.entry(zone(id)).or_default().push(*id);
        }
        let quiet = chosen.iter().copied().find(|id| *id != leader && !live(id));
        // The most crowded zone among those with a voter other than the
        // leader (the leader's zone alone may be the most crowded).
        let crowded = zones
            .values()
            .filter(|ids| ids.iter().any(|id| *id != leader))
            .max_by_key(|ids| ids.len())
            .and_then(|ids| ids.iter().rev().copied().find(|id| *id != leader));
        let Some(extra) = quiet.or(crowded) else {
            break;
        };
        chosen.remove(&extra);
    }
    spread_over_zones(&mut chosen, &mut candidates, leader, voters_max, &zone);
    if chosen.is_empty() {
        chosen.insert(leader);
    }
    chosen
}

/// Spread: a learner in a zone without a voter takes the place of a voter
/// from the zone that has the most (never the leader), at most
/// `voters_max` times.
fn spread_over_zones(
    chosen: &mut BTreeSet<u64>,
    candidates: &mut Vec<u64>,
    leader: u64,
    voters_max: usize,
    zone: &dyn Fn(&u64) -> String,
) {
    for _ in 0..voters_max {
        let mut zones: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for id in chosen.iter() {
            zones.entry(zone(id)).or_default().push(*id);
        }
        let newcomer = candidates
            .iter()
            .copied()
            .find(|id| !zone(id).is_empty() && !zones.contains_key(&zone(id)));
        let crowded = zones
            .values()
            .filter(|ids| ids.len() > 1)
            .max_by_key(|ids| ids.len())
            .and_then(|ids| ids.iter().copied().find(|id| *id != leader));
        match (newcomer, crowded) {
            (Some(newcomer), Some(crowded)) => {
                chosen.remove(&crowded);
                chosen.insert(newcomer);
                candidates.retain(|id| *id != newcomer);
            }
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, zone: &str, status: Liveness, since_ms: u64) -> Member {
        Member {
            name: format!("n{id}"),
            raft_id: id,
            api_addr: format!("n{id}:7950"),
            zone: zone.into(),
            status,
            since_ms,
            may_vote: true,
        }
    }

    #[test]
    fn workers_never_vote() {
        let mut members: Vec<Member> = (1..=5)
            .map(|id| member(id, "", Liveness::Alive, 0))
            .collect();
        for worker in &mut members[1..4] {
            worker.may_vote = false;
        }
        let all: BTreeSet<u64> = (1..=5).collect();
        // Even one that is a voter already is replaced.
        let chosen = choose_voters(1, &[1, 2].into(), &all, &members, 5, 1_000);
        assert_eq!(chosen, [1, 5].into());
    }

    /// `choose_voters` with the default grace.
    fn choose_voters(
        leader: u64,
        voters: &BTreeSet<u64>,
        in_consensus: &BTreeSet<u64>,
        members: &[Member],
        voters_max: usize,
        now_ms: u64,
    ) -> BTreeSet<u64> {
        super::choose_voters(
            leader,
            voters,
            in_consensus,
            members,
            voters_max,
            &DutyBounds {
                // Gossip that has run for long: unknown voters are gone.
                unknown_voter_grace_ms: 0,
                ..DutyBounds::default()
            },
            now_ms,
        )
    }

    fn ids(list: &[u64]) -> BTreeSet<u64> {
        list.iter().copied().collect()
    }

    #[test]
    fn every_node_votes_until_three_then_three_then_five() {
        let alive = |n: u64| {
            (1..=n)
                .map(|id| member(id, "", Liveness::Alive, 0))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            choose_voters(1, &ids(&[1]), &ids(&[1, 2]), &alive(2), 5, 0),
            ids(&[1, 2])
        );
        assert_eq!(
            choose_voters(1, &ids(&[1, 2]), &ids(&[1, 2, 3, 4]), &alive(4), 5, 0),
            ids(&[1, 2, 3])
        );
        assert_eq!(
            choose_voters(
                1,
                &ids(&[1, 2, 3]),
                &ids(&[1, 2, 3, 4, 5, 6]),
                &alive(6),
                5,
                0
            ),
            ids(&[1, 2, 3, 4, 5])
        );
        assert_eq!(
            choose_voters(1, &ids(&[1, 2, 3]), &ids(&[1, 2, 3, 4, 5]), &alive(5), 3, 0),
            ids(&[1, 2, 3])
        );
    }

    #[test]
    fn voters_gossip_does_not_know_yet_keep_their_seats_for_a_grace() {
        // A leader just restarted: gossip knows only itself so far.
        let members = vec![member(1, "", Liveness::Alive, 0)];
        let voters = ids(&[1, 2, 3]);
        let bounds = DutyBounds {
            gossip_started_ms: 100_000,
            ..DutyBounds::default()
        };
        let choose =
            |now_ms| super::choose_voters(1, &voters, &voters, &members, 5, &bounds, now_ms);
        assert_eq!(choose(100_000 + 29_999), voters, "within the grace");
        assert_eq!(
            choose(100_000 + 30_000),
            ids(&[1]),
            "never heard of after it: gone"
        );
    }

    #[test]
    fn a_voter_dead_past_the_grace_is_replaced_by_a_live_learner() {
        let members = vec![
            member(1, "", Liveness::Alive, 0),
            member(2, "", Liveness::Alive, 0),
            member(3, "", Liveness::Dead, 10_000),
            member(4, "", Liveness::Alive, 0),
        ];
        let voters = ids(&[1, 2, 3]);
        let all = ids(&[1, 2, 3, 4]);
        assert_eq!(
            choose_voters(1, &voters, &all, &members, 5, 11_000),
            voters,
            "within the grace"
        );
        assert_eq!(
            choose_voters(1, &voters, &all, &members, 5, 12_500),
            ids(&[1, 2, 4])
        );
    }

    #[test]
    fn a_dead_voter_within_its_grace_costs_no_live_voter_its_seat() {
        let members = vec![
            member(1, "", Liveness::Alive, 0),
            member(2, "", Liveness::Alive, 0),
            member(3, "", Liveness::Dead, 1_000),
        ];
        let voters = ids(&[1, 2, 3]);
        assert_eq!(
            choose_voters(1, &voters, &voters, &members, 5, 1_500),
            voters
        );
    }

    #[test]
    fn lowering_voters_max_demotes_even_when_every_zone_has_one_voter() {
        // Found by the simulator (seed 1, step 107): the leader's zone,
        // named last, was taken as the most crowded and nobody stepped down.
        let members = vec![
            member(1, "z2", Liveness::Alive, 0),
            member(2, "z0", Liveness::Alive, 0),
            member(3, "z1", Liveness::Alive, 0),
        ];
        let voters = ids(&[1, 2, 3]);
        assert_eq!(
            choose_voters(1, &voters, &voters, &members, 1, 0),
            ids(&[1])
        );
        assert_eq!(choose_voters(1, &voters, &voters, &members, 3, 0), voters);
    }

    #[test]
    fn voters_spread_over_zones() {
        let members = vec![
            member(1, "a", Liveness::Alive, 0),
            member(2, "a", Liveness::Alive, 0),
            member(3, "b", Liveness::Alive, 0),
            member(4, "c", Liveness::Alive, 0),
        ];
        let chosen = choose_voters(1, &ids(&[1, 2, 3]), &ids(&[1, 2, 3, 4]), &members, 5, 0);
        assert_eq!(
            chosen,
            ids(&[1, 3, 4]),
            "one voter per zone, the leader kept"
        );
    }

    fn state_with(nodes: &[(&str, NodeStatus)]) -> State {
        let mut state = State::default();
        for (name, status) in nodes {
            state.nodes.insert(
                name.to_string(),
                shoal_types::Node {
                    name: name.to_string(),
                    addr: format!("{name}:7950"),
                    os: "Linux".into(),
                    arch: "x86_64".into(),
                    cpus: 1,
                    memory_total_bytes: 1 << 30,
                    cpu_allocatable_millis: 1000,
                    memory_allocatable_bytes: 1 << 30,
                    labels: Default::default(),
                    started_at_ms: 0,
                    status: *status,
                    taints: Vec::new(),
                    drain: false,
                    subnet: None,
                    allows: Default::default(),
                },
            );
        }
        state
    }

    fn consensus(leader: u64, voters: &[u64], all: &[u64]) -> Consensus {
        Consensus {
            leader,
            voters: ids(voters),
            members: ids(all),
        }
    }

    #[test]
    fn a_new_member_joins_as_a_learner_and_a_dead_one_is_declared_after_the_confirm() {
        let state = state_with(&[("n1", NodeStatus::Alive), ("n2", NodeStatus::Alive)]);
        let members = vec![
            member(1, "", Liveness::Alive, 0),
            member(2, "", Liveness::Dead, 1_000),
            member(3, "", Liveness::Alive, 0),
        ];
        let bounds = DutyBounds::default();
        let at = |now| {
            leader_duties(
                &state,
                &members,
                &consensus(1, &[1, 2], &[1, 2]),
                &bounds,
                now,
            )
        };
        let early = at(1_000 + bounds.dead_confirm_ms - 1);
        assert_eq!(
            early[0],
            Duty::AddLearner {
                id: 3,
                name: "n3".into(),
                api_addr: "n3:7950".into()
            }
        );
        assert!(
            !early
                .iter()
                .any(|d| matches!(d, Duty::SetNodeStatus { .. })),
            "suspicion of death is not enough before the confirm: {early:?}"
        );
        let later = at(1_000 + bounds.dead_confirm_ms);
        assert!(later.contains(&Duty::SetNodeStatus {
            name: "n2".into(),
            status: NodeStatus::Dead
        }));
    }

    #[test]
    fn a_node_dead_for_long_or_unknown_to_gossip_is_forgotten() {
        let state = state_with(&[
            ("n1", NodeStatus::Alive),
            ("n2", NodeStatus::Dead),
            ("n3", NodeStatus::Left),
        ]);
        let bounds = DutyBounds::default();
        let members = vec![
            member(1, "", Liveness::Alive, 0),
            member(2, "", Liveness::Dead, 0),
        ];
        let (n2, n3) = (
            shoal_types::consensus_id("n2"),
            shoal_types::consensus_id("n3"),
        );
        let learners = Consensus {
            leader: 1,
            voters: ids(&[1]),
            members: ids(&[1, n2, n3]),
        };
        let duties = leader_duties(
            &state,
            &members,
            &learners,
            &bounds,
            bounds.forget_after_ms + 1,
        );
        assert!(
            duties.contains(&Duty::Forget {
                name: "n2".into(),
                leave_consensus: Some(n2)
            }),
            "dead for long: {duties:?}"
        );
        assert!(
            duties.contains(&Duty::Forget {
                name: "n3".into(),
                leave_consensus: Some(n3)
            }),
            "gossip forgot n3: {duties:?}"
        );
        let soon = leader_duties(&state, &members, &learners, &bounds, 10);
        assert!(
            !soon
                .iter()
                .any(|duty| matches!(duty, Duty::Forget { name, .. } if name == "n2")),
            "{soon:?}"
        );
        assert!(
            soon.iter()
                .any(|duty| matches!(duty, Duty::Forget { name, .. } if name == "n3")),
            "a node gossip no longer knows is forgotten at once: {soon:?}"
        );
    }

    #[test]
    fn the_same_inputs_give_the_same_duties() {
        let state = state_with(&[("n1", NodeStatus::Alive)]);
        let members: Vec<Member> = (1..=4)
            .map(|id| member(id, "", Liveness::Alive, 0))
            .collect();
        let bounds = DutyBounds::default();
        let c = consensus(1, &[1], &[1, 2, 3, 4]);
        let first = leader_duties(&state, &members, &c, &bounds, 5);
        assert_eq!(first, leader_duties(&state, &members, &c, &bounds, 5));
        assert_eq!(
            first.last(),
            Some(&Duty::ChangeVoters {
                voters: ids(&[1, 2, 3]),
                remove: BTreeSet::new()
            })
        );
    }
}
