//! How the node's state, gossip and runtime look on the wire: the views of
//! apps and their rollouts, what could not be placed, why a plan stops a
//! task, nodes, and images.

use std::collections::HashMap;

use shoal_api::wire::{
    AppView, BrokenTaskView, ImageView, NodeView, RolledBackView, RolloutView, ServiceRolloutView,
    ServiceView, UnplacedView,
};
use shoal_cluster::membership::{Member, MemberStatus};
use shoal_cluster::raft::RaftStatus;
use shoal_state::fit::Request;
use shoal_state::history::MarkState;
use shoal_state::{State, StopReason};
use shoal_types::{consensus_id, DesiredState, NodeStatus, Taint, TaintEffect};

pub(super) fn unplaced_view(entry: &shoal_state::Unplaced) -> UnplacedView {
    UnplacedView {
        app: entry.app.clone(),
        service: entry.service.clone(),
        count: entry.count,
        reason: entry.words().into_owned(),
    }
}

pub(super) fn app_view(state: &State, name: &str) -> Option<AppView> {
    let app = state.apps.get(name)?;
    let rollout = state.rollout(name)?;
    let services = app
        .spec
        .services
        .iter()
        .zip(&rollout.services)
        .map(|(service, progress)| ServiceView {
            name: service.name.clone(),
            image: service.image().to_string(),
            image_digest: app.images.get(&service.name).map(|pin| pin.digest.clone()),
            image_source: app.images.get(&service.name).map(|pin| pin.source),
            kind: service.kind,
            replicas: progress.wanted,
            running: progress.running,
            completed: progress.completed,
            failed: progress.failed,
            // Asked of the nodes afterwards (`protection`).
            prepull: None,
        })
        .collect();
    Some(AppView {
        name: app.spec.name.clone(),
        version: app.version,
        created_at_ms: app.created_at_ms,
        updated_at_ms: app.updated_at_ms,
        services,
        spec: app.spec.clone(),
        unplaced: state
            .unplaced
            .iter()
            .filter(|entry| entry.app == name)
            .map(unplaced_view)
            .collect(),
        rollout: Some(rollout_view(&rollout)),
    })
}

pub(super) fn rollout_view(rollout: &shoal_state::rollout::Rollout) -> RolloutView {
    RolloutView {
        version: rollout.version,
        done: rollout.done,
        broken: rollout.broken.as_ref().map(|broken| BrokenTaskView {
            task: broken.task.clone(),
            state: broken.state,
            message: broken.message.clone(),
        }),
        services: rollout
            .services
            .iter()
            .map(|service| ServiceRolloutView {
                service: service.service.clone(),
                wanted: service.wanted,
                running: service.running,
                healthy: Some(service.healthy),
                outdated: Some(service.outdated),
                completed: service.completed,
                failed: service.failed,
                stopping: service.stopping,
                done: service.done,
                unplaced: service.unplaced.clone(),
            })
            .collect(),
        paused: rollout
            .mark
            .as_ref()
            .filter(|mark| mark.state == MarkState::Paused)
            .map(|mark| mark.reason.clone()),
        // A rollback's mark keeps the version that failed, also once done.
        rolled_back: rollout.mark.as_ref().and_then(|mark| {
            Some(RolledBackView {
                failed_version: mark.failed_version?,
                reason: mark.reason.clone(),
            })
        }),
    }
}

/// Why the scheduler stops a task, worded from its decision with what
/// the state says of the task's node.
pub(super) fn stop_words(state: &State, task: &shoal_types::Task, why: StopReason) -> String {
    let node = state.nodes.get(&task.node);
    let name = &task.node;
    match why {
        StopReason::ServiceGone => "the service is gone".into(),
        StopReason::SpecChanged => "the spec changed".into(),
        StopReason::ImageChanged => "its image names another digest now".into(),
        StopReason::NodeLost => match node {
            Some(node) => format!("node {name} is {}", node.status.as_str()),
            None => "its node is gone".into(),
        },
        StopReason::NodeDrained => format!("node {name} is drained"),
        StopReason::NodeTainted => {
            match node.and_then(|node| {
                shoal_state::fit::untolerated(node, &task.spec, |e| e == TaintEffect::NoExecute)
            }) {
                Some(taint) => format!("node {name} is tainted `{taint}`"),
                None => format!("node {name} is tainted NoExecute"),
            }
        }
        StopReason::NotAllowed => {
            match node.and_then(|node| node.allows.lacks(task.spec.needs())) {
                Some(allowance) => format!(
                    "node {name} no longer allows {} (its agent lacks {})",
                    allowance.what(),
                    allowance.flag()
                ),
                None => format!("node {name} no longer allows what it needs"),
            }
        }
        StopReason::ScaledDown => "scaled down".into(),
        StopReason::NotAdmitted => {
            match node.and_then(|node| shoal_state::fit::admits(node, &task.spec).err()) {
                Some(reject) => format!("node {name} is {reject}"),
                None => format!("node {name} no longer admits it"),
            }
        }
        StopReason::DuplicateOnNode => format!("node {name} runs another task of it"),
        StopReason::Preempted => "a higher priority needs the room".into(),
        StopReason::NodeShrank => {
            format!("node {name} came back with less room than its tasks ask")
        }
    }
}

/// Every node this one knows of, from its own view: the nodes in its
/// applied state and the members gossip knows that the state does not
/// (yet), with the resources their running tasks request.
pub(super) fn node_views(
    state: &State,
    members: &[Member],
    raft: &RaftStatus,
    now: u64,
) -> Vec<NodeView> {
    let mut names: Vec<&str> = state.nodes.keys().map(String::as_str).collect();
    let mut requested: HashMap<&str, (Request, u32)> = Default::default();
    for task in state.tasks.values() {
        if task.desired == DesiredState::Running {
            let entry = requested.entry(task.node.as_str()).or_default();
            entry.0.add(Request::of(&task.spec));
            entry.1 += 1;
        }
    }
    for member in members {
        if !state.nodes.contains_key(&member.facts.name) && !member.facts.name.is_empty() {
            names.push(&member.facts.name);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let recorded = state.nodes.get(name);
            let member = members.iter().find(|member| member.facts.name == name);
            let id = consensus_id(name);
            let role = if raft.voters.contains(&id) {
                "voter"
            } else if raft.learners.contains(&id) {
                "learner"
            } else {
                "-"
            };
            // Gossip knows liveness first; the state has the verdict
            // that moves work.
            let status = match member.map(|m| m.status) {
                Some(MemberStatus::Alive) => NodeStatus::Alive,
                Some(MemberStatus::Suspect) => NodeStatus::Suspect,
                Some(MemberStatus::Dead) => NodeStatus::Dead,
                Some(MemberStatus::Left) => NodeStatus::Left,
                None => recorded.map_or(NodeStatus::Dead, |node| node.status),
            };
            let facts = member.map(|m| &m.facts);
            let started_at_ms = facts
                .map(|f| f.started_at_ms)
                .or(recorded.map(|n| n.started_at_ms))
                .unwrap_or(now);
            NodeView {
                name: name.to_string(),
                addr: facts
                    .map(|f| f.api_addr.clone())
                    .or(recorded.map(|n| n.addr.clone()))
                    .unwrap_or_default(),
                status,
                role: role.to_string(),
                leader: raft.leader == Some(id),
                os: facts
                    .map(|f| f.os.clone())
                    .or(recorded.map(|n| n.os.clone()))
                    .unwrap_or_default(),
                arch: facts
                    .map(|f| f.arch.clone())
                    .or(recorded.map(|n| n.arch.clone()))
                    .unwrap_or_default(),
                uptime_s: if status == NodeStatus::Alive || status == NodeStatus::Suspect {
                    now.saturating_sub(started_at_ms) / 1000
                } else {
                    0
                },
                cpus: facts
                    .map(|f| f.cpus)
                    .or(recorded.map(|n| n.cpus))
                    .unwrap_or(0),
                memory_total_bytes: facts
                    .map(|f| f.memory_total_bytes)
                    .or(recorded.map(|n| n.memory_total_bytes))
                    .unwrap_or(0),
                memory_used_bytes: facts.map(|f| f.memory_used_bytes).unwrap_or(0),
                labels: facts
                    .map(|f| f.labels.clone())
                    .or(recorded.map(|n| n.labels.clone()))
                    .unwrap_or_default(),
                taints: recorded
                    .map(|n| n.taints.iter().map(Taint::to_string).collect())
                    .unwrap_or_default(),
                drain: recorded.is_some_and(|n| n.drain),
                allows: recorded.map_or_else(Vec::new, |n| {
                    [
                        (n.allows.privileged, "privileged"),
                        (n.allows.host_network, "host_network"),
                    ]
                    .into_iter()
                    .filter(|(allowed, _)| *allowed)
                    .map(|(_, name)| name.to_string())
                    .collect()
                }),
                subnet: recorded.and_then(|n| n.subnet.clone()),
                cpu_allocatable_millis: recorded.map_or(0, |n| n.cpu_allocatable_millis),
                memory_allocatable_bytes: recorded.map_or(0, |n| n.memory_allocatable_bytes),
                cpu_requested_millis: requested.get(name).map_or(0, |r| r.0.cpu_millis),
                memory_requested_bytes: requested.get(name).map_or(0, |r| r.0.memory_bytes),
                tasks: requested.get(name).map_or(0, |r| r.1),
                release: facts.map(|f| f.release.clone()).unwrap_or_default(),
                log_version: facts.map_or(0, |f| f.log_version),
            }
        })
        .collect()
}

pub(super) fn image_view(image: shoal_runtime::ImageInfo) -> ImageView {
    ImageView {
        name: image.name,
        digest: image.digest,
        size_bytes: image.size_bytes,
        created_s: image.created_s,
    }
}
