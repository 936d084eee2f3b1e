//! The invariants the simulator checks after every step, and after the
//! cluster is healed: on the state, on the leader's duties and the
//! consensus they leave, and on every step of every node's agent. Each
//! check returns the first violation in words.

use std::collections::{BTreeMap, BTreeSet};

use shoal_agent::{Action, Observed};
use shoal_sched::duties::{Consensus, Duty, DutyBounds, Liveness, Member};
use shoal_state::{fit, State};
use shoal_types::{DesiredState, Kind, NodeStatus, TaintEffect, Task, TaskStatus};

/// What a task looked like at the end of the previous step: the fields that
/// must never change (its placement) and the ones that only move forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub node: String,
    pub app: String,
    pub service: String,
    pub slot: u32,
    pub app_version: u64,
    pub desired: DesiredState,
    pub status: TaskStatus,
}

/// Every task of the previous step, by id.
pub type Previous = BTreeMap<String, Seen>;

pub fn observe(state: &State) -> Previous {
    state
        .tasks
        .values()
        .map(|task| {
            (
                task.id.clone(),
                Seen {
                    node: task.node.clone(),
                    app: task.app.clone(),
                    service: task.service.clone(),
                    slot: task.slot,
                    app_version: task.app_version,
                    desired: task.desired,
                    status: task.status.clone(),
                },
            )
        })
        .collect()
}

/// What must hold once the scheduler has settled, compared with the
/// previous step: the state's own invariants, no node over-committed, no
/// work the cluster wants running on a node that is not alive, drained, or
/// tainted `NoExecute` against it (finished batch tasks stay where they
/// ran), placements never rewritten, desired state and task status only
/// moving forward.
pub fn check_step(state: &State, previous: &Previous) -> Result<(), String> {
    state
        .check_invariants()
        .map_err(|error| format!("state invariant: {error}"))?;
    if let Some((node, used)) = state.overcommitted_nodes().first() {
        let room = state.nodes.get(node).map_or((0, 0), |node| {
            (node.cpu_allocatable_millis, node.memory_allocatable_bytes)
        });
        return Err(format!(
            "node {node} is over-committed: tasks request {}m cpu and {} bytes, it has {}m and {} bytes",
            used.cpu_millis, used.memory_bytes, room.0, room.1
        ));
    }
    for task in state.tasks.values() {
        if task.desired == DesiredState::Running && !task.finished_for_good() {
            let Some(node) = state.nodes.get(&task.node) else {
                return Err(format!("task {} is on unknown node {}", task.id, task.node));
            };
            if node.status != NodeStatus::Alive {
                return Err(format!(
                    "task {} is desired running on node {}, which is {}",
                    task.id,
                    node.name,
                    node.status.as_str()
                ));
            }
            if node.drain {
                return Err(format!(
                    "task {} is desired running on drained node {}",
                    task.id, node.name
                ));
            }
            if let Some(taint) =
                fit::untolerated(node, &task.spec, |effect| effect == TaintEffect::NoExecute)
            {
                return Err(format!(
                    "task {} is desired running on node {} tainted `{taint}`, which it does not tolerate",
                    task.id, node.name
                ));
            }
        }
        let Some(seen) = previous.get(&task.id) else {
            continue;
        };
        if (
            &seen.node,
            &seen.app,
            &seen.service,
            seen.slot,
            seen.app_version,
        ) != (
            &task.node,
            &task.app,
            &task.service,
            task.slot,
            task.app_version,
        ) {
            return Err(format!(
                "task {}'s placement was rewritten: was {}.{} slot {} v{} on {}, now {}.{} slot {} v{} on {}",
                task.id,
                seen.app,
                seen.service,
                seen.slot,
                seen.app_version,
                seen.node,
                task.app,
                task.service,
                task.slot,
                task.app_version,
                task.node
            ));
        }
        if seen.desired == DesiredState::Stopped && task.desired == DesiredState::Running {
            return Err(format!(
                "task {} went from desired stopped back to running",
                task.id
            ));
        }
        if !task.status.may_follow(&seen.status) {
            return Err(format!(
                "task {}'s status moved backwards: attempt {} {} after attempt {} {}",
                task.id,
                task.status.attempt,
                task.status.state.as_str(),
                seen.status.attempt,
                seen.status.state.as_str()
            ));
        }
    }
    Ok(())
}

/// What must hold once every node is alive, untainted and undrained and the
/// scheduler has settled: every service and batch job has `replicas` tasks
/// desired running, every global service one on each node that admits it,
/// except what the state reports as unplaced; and nothing stopped lingers.
pub fn check_healed(state: &State) -> Result<(), String> {
    for task in state.tasks.values() {
        if task.desired == DesiredState::Stopped {
            return Err(format!(
                "task {} is still there, desired stopped, after healing (status {})",
                task.id,
                task.status.state.as_str()
            ));
        }
    }
    for (app_name, app) in &state.apps {
        for service in &app.spec.services {
            let mut running: Vec<&shoal_types::Task> = state
                .tasks
                .values()
                .filter(|task| {
                    &task.app == app_name
                        && task.service == service.name
                        && task.desired == DesiredState::Running
                })
                .collect();
            let unplaced: u64 = state
                .unplaced
                .iter()
                .filter(|unplaced| &unplaced.app == app_name && unplaced.service == service.name)
                .map(|unplaced| u64::from(unplaced.count))
                .sum();
            // A paused rolling update keeps an old task beside a new one
            // in the slots it had begun: slots count, not tasks.
            let paused = app
                .rollout_mark()
                .is_some_and(|mark| mark.state == shoal_state::history::MarkState::Paused);
            if paused && service.kind == Kind::Service {
                let mut slots: Vec<u32> = running.iter().map(|task| task.slot).collect();
                slots.sort_unstable();
                slots.dedup();
                running.truncate(slots.len());
            }
            let wanted = match service.kind {
                Kind::Service | Kind::Batch => u64::from(service.replicas),
                Kind::Global => {
                    let mut per_node: BTreeMap<&str, u32> = BTreeMap::new();
                    for task in &running {
                        *per_node.entry(task.node.as_str()).or_default() += 1;
                    }
                    if let Some((node, count)) = per_node.iter().find(|(_, count)| **count > 1) {
                        return Err(format!(
                            "global service {app_name}.{} has {count} tasks on node {node}",
                            service.name
                        ));
                    }
                    for node in per_node.keys() {
                        let admitted = state
                            .nodes
                            .get(*node)
                            .is_some_and(|node| fit::admits(node, service).is_ok());
                        if !admitted {
                            return Err(format!(
                                "global service {app_name}.{} runs on node {node}, which does not admit it",
                                service.name
                            ));
                        }
                    }
                    state
                        .nodes
                        .values()
                        .filter(|node| fit::admits(node, service).is_ok())
                        .count() as u64
                }
            };
            if running.len() as u64 + unplaced != wanted {
                return Err(format!(
                    "{} {app_name}.{} wants {wanted} tasks after healing; {} are desired running and {unplaced} reported unplaced (reasons: {:?})",
                    match service.kind {
                        Kind::Service => "service",
                        Kind::Global => "global service",
                        Kind::Batch => "batch job",
                    },
                    service.name,
                    running.len(),
                    state
                        .unplaced
                        .iter()
                        .filter(|u| &u.app == app_name && u.service == service.name)
                        .map(|u| u.words().into_owned())
                        .collect::<Vec<_>>()
                ));
            }
        }
    }
    Ok(())
}

/// What must hold of the leader's duties, derived from `members` (gossip),
/// `consensus` and `state` at `now_ms`, before they are carried out: a
/// learner is a live member not yet in the consensus; a node's recorded
/// status follows gossip (dead only once gossip has said so for
/// `dead_confirm_ms`, alive only for a member gossip sees alive or
/// suspect); only a node that is not alive, and that gossip does not see
/// alive, is forgotten, and never a voter with it; a change of voters
/// keeps the leader, promotes only members gossip sees alive, removes none
/// of them and stays within `voters_max`.
pub fn check_duties(
    state: &State,
    members: &[Member],
    consensus: &Consensus,
    bounds: &DutyBounds,
    now_ms: u64,
    duties: &[Duty],
) -> Result<(), String> {
    let member = |name: &str| members.iter().find(|member| member.name == name);
    let by_id = |id: u64| members.iter().find(|member| member.raft_id == id);
    let live = |member: &Member| matches!(member.status, Liveness::Alive | Liveness::Suspect);
    let mut verdicts: BTreeSet<&str> = BTreeSet::new();
    for duty in duties {
        match duty {
            Duty::AddLearner { id, name, .. } => {
                let Some(member) = member(name).filter(|member| member.raft_id == *id) else {
                    return Err(format!(
                        "the leader admits {name} (id {id}) as a learner, but gossip knows no such member"
                    ));
                };
                if !live(member) {
                    return Err(format!(
                        "the leader admits {name} as a learner, which gossip sees {}",
                        liveness(member.status)
                    ));
                }
                if consensus.members.contains(id) {
                    return Err(format!(
                        "the leader admits {name} as a learner, but it is in the consensus already"
                    ));
                }
            }
            Duty::SetNodeStatus { name, status } => {
                let Some(member) = member(name) else {
                    return Err(format!(
                        "the leader sets node {name} {}, but gossip does not know it",
                        status.as_str()
                    ));
                };
                let dead_for_ms = now_ms.saturating_sub(member.since_ms);
                let follows_gossip = match status {
                    NodeStatus::Alive => live(member),
                    NodeStatus::Dead => {
                        member.status == Liveness::Dead && dead_for_ms >= bounds.dead_confirm_ms
                    }
                    NodeStatus::Left => member.status == Liveness::Left,
                    // Suspicion is gossip's business; it never moves work.
                    NodeStatus::Suspect => false,
                };
                if !follows_gossip {
                    return Err(format!(
                        "the leader sets node {name} {} while gossip sees it {} for {dead_for_ms}ms",
                        status.as_str(),
                        liveness(member.status)
                    ));
                }
                if !state.nodes.contains_key(name) {
                    return Err(format!(
                        "the leader sets node {name} {}, which the state does not have",
                        status.as_str()
                    ));
                }
                verdicts.insert(name);
            }
            Duty::Forget {
                name,
                leave_consensus,
            } => {
                match state.nodes.get(name) {
                    None => {
                        return Err(format!(
                            "the leader forgets node {name}, which the state does not have"
                        ))
                    }
                    Some(node) if node.status == NodeStatus::Alive => {
                        return Err(format!("the leader forgets node {name}, which is alive"))
                    }
                    Some(_) => {}
                }
                if let Some(member) = member(name).filter(|member| live(member)) {
                    return Err(format!(
                        "the leader forgets node {name}, which gossip sees {}",
                        liveness(member.status)
                    ));
                }
                if verdicts.contains(name.as_str()) {
                    return Err(format!(
                        "the leader both sets node {name}'s status and forgets it in one pass"
                    ));
                }
                if let Some(id) = leave_consensus {
                    if *id != shoal_types::consensus_id(name) || consensus.voters.contains(id) {
                        return Err(format!(
                            "forgetting node {name}, the leader takes id {id} out of the consensus, \
                             which is not that node as a learner"
                        ));
                    }
                }
            }
            Duty::ChangeVoters { voters, remove } => {
                let voters_max = state.settings.voters_max.max(1) as usize;
                if voters.len() > voters_max {
                    return Err(format!(
                        "the leader wants {} voters, more than voters_max {voters_max}: {voters:?}",
                        voters.len()
                    ));
                }
                if !voters.contains(&consensus.leader) {
                    return Err(format!(
                        "the leader (id {}) leaves itself out of the voters {voters:?}",
                        consensus.leader
                    ));
                }
                if let Some(id) = voters.iter().find(|id| !consensus.members.contains(id)) {
                    return Err(format!(
                        "the leader makes id {id} a voter, which is not in the consensus"
                    ));
                }
                for id in voters.difference(&consensus.voters) {
                    let status = by_id(*id).map(|member| member.status);
                    if status != Some(Liveness::Alive) {
                        return Err(format!(
                            "the leader promotes id {id} to voter, which gossip sees {}",
                            status.map_or("nowhere", liveness)
                        ));
                    }
                }
                for id in remove {
                    if voters.contains(id) || *id == consensus.leader {
                        return Err(format!(
                            "the leader removes id {id} from the consensus and keeps it a voter (or leads)"
                        ));
                    }
                    if by_id(*id).is_some_and(|member| member.status == Liveness::Alive) {
                        return Err(format!(
                            "the leader removes id {id} from the consensus, which gossip sees alive"
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// What must hold of the consensus after the leader's duties: the leader
/// votes, every voter is a member, no more voters than `voters_max`, and a
/// majority of them is `up` (the simulator never takes one down, so
/// losing it would be the duties' doing).
pub fn check_consensus(
    consensus: &Consensus,
    voters_max: u32,
    up: &BTreeSet<u64>,
) -> Result<(), String> {
    if !consensus.voters.contains(&consensus.leader) {
        return Err(format!(
            "the leader (id {}) is not a voter: {:?}",
            consensus.leader, consensus.voters
        ));
    }
    if let Some(id) = consensus
        .voters
        .iter()
        .find(|id| !consensus.members.contains(id))
    {
        return Err(format!("voter id {id} is not a member of the consensus"));
    }
    if consensus.voters.len() > voters_max.max(1) as usize {
        return Err(format!(
            "the consensus has {} voters, more than voters_max {voters_max}",
            consensus.voters.len()
        ));
    }
    let voting = consensus.voters.intersection(up).count();
    if voting * 2 <= consensus.voters.len() {
        return Err(format!(
            "only {voting} of the {} voters are up: the consensus lost its majority",
            consensus.voters.len()
        ));
    }
    Ok(())
}

/// What must hold of the consensus once every node is up and alive and the
/// leader has settled: every voter is one of them (`alive`), and there are
/// as many as the rule says: all of 1 or 2 members, 3 of 3 or 4, 5 from 5,
/// never more than `voters_max`.
pub fn check_healed_consensus(
    consensus: &Consensus,
    voters_max: u32,
    alive: &BTreeSet<u64>,
) -> Result<(), String> {
    if let Some(id) = consensus.voters.iter().find(|id| !alive.contains(id)) {
        return Err(format!(
            "after healing, voter id {id} is not a live member of the cluster"
        ));
    }
    let members = consensus.members.intersection(alive).count();
    let target = match members {
        0..=2 => members.max(1),
        3 | 4 => 3,
        _ => 5,
    }
    .min(voters_max.max(1) as usize);
    if consensus.voters.len() != target {
        return Err(format!(
            "after healing, the consensus has {} voters; with {members} live members and voters_max {voters_max} it should have {target}",
            consensus.voters.len()
        ));
    }
    Ok(())
}

/// What must hold of one step of a node's agent, given the tasks placed on
/// it (`desired`) and the containers it `observed`: it starts only tasks
/// desired running, never one whose container runs (a running container
/// is adopted, not restarted), never destroys the container of a task
/// desired running, and asks for one thing at most per task.
pub fn check_agent_step(
    node: &str,
    desired: &[&Task],
    observed: &BTreeMap<String, Observed>,
    actions: &[Action],
) -> Result<(), String> {
    let wanted = |id: &str| {
        desired
            .iter()
            .find(|task| task.id == id)
            .map(|task| task.desired)
    };
    let mut touched: BTreeSet<&str> = BTreeSet::new();
    for action in actions {
        let id = match action {
            Action::Run { task_id, .. } => {
                if wanted(task_id) != Some(DesiredState::Running) {
                    return Err(format!(
                        "node {node}'s agent starts task {task_id}, which is not desired running on it"
                    ));
                }
                if observed.get(task_id) == Some(&Observed::Running) {
                    return Err(format!(
                        "node {node}'s agent starts task {task_id} again while its container runs"
                    ));
                }
                task_id
            }
            Action::Destroy { container_id, .. } => {
                if wanted(container_id) == Some(DesiredState::Running) {
                    return Err(format!(
                        "node {node}'s agent destroys the container of task {container_id}, which is desired running"
                    ));
                }
                container_id
            }
        };
        if !touched.insert(id.as_str()) {
            return Err(format!(
                "node {node}'s agent asks for two actions on {id} in one step"
            ));
        }
    }
    Ok(())
}

fn liveness(status: Liveness) -> &'static str {
    match status {
        Liveness::Alive => "alive",
        Liveness::Suspect => "suspect",
        Liveness::Dead => "dead",
        Liveness::Left => "left",
    }
}
