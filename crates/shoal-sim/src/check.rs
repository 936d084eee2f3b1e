//! The invariants the simulator checks after every step, and after the
//! cluster is healed. Each check returns the first violation in words.

use std::collections::BTreeMap;

use shoal_state::{fit, State};
use shoal_types::{DesiredState, Kind, NodeStatus, TaintEffect, TaskStatus};

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
        if task.desired == DesiredState::Running && !shoal_sched::batch_done(task) {
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
            let running: Vec<&shoal_types::Task> = state
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
