//! The scheduler: a pure function from a state snapshot to a [`Plan`].
//!
//! `reconcile` compares what apps want (replicas of the current version)
//! with the tasks that exist and says what to place, stop and forget; the
//! state machine re-checks the plan when it applies it, so a stale snapshot
//! can never over-fill a slot.

use std::collections::{BTreeMap, BTreeSet};

use shoal_state::{Placement, Plan, State, Unplaced};
use shoal_types::{DesiredState, NodeStatus, TaskState};

pub fn reconcile(state: &State) -> Plan {
    let mut plan = Plan::default();
    // Load per live node, counted as we place so one plan spreads its work.
    let mut load: BTreeMap<&str, usize> = state
        .nodes
        .values()
        .filter(|node| node.status == NodeStatus::Alive)
        .map(|node| (node.name.as_str(), 0))
        .collect();
    for task in state.tasks.values() {
        if task.desired == DesiredState::Running {
            if let Some(count) = load.get_mut(task.node.as_str()) {
                *count += 1;
            }
        }
    }

    // What each slot of the current version already has.
    let mut filled: BTreeSet<(&str, &str, u32)> = BTreeSet::new();
    for task in state.tasks.values() {
        // A task on a node that is not alive is lost: its slot is free
        // (and the node stops it if it comes back).
        let node_alive = state
            .nodes
            .get(&task.node)
            .is_some_and(|node| node.status == NodeStatus::Alive);
        let keep = node_alive
            && state
                .apps
                .get(&task.app)
                .and_then(|app| app.spec.services.iter().find(|s| s.name == task.service))
                .is_some_and(|service| {
                    task.slot < service.replicas && task.spec.same_task_as(service)
                });
        match task.desired {
            DesiredState::Running if keep => {
                filled.insert((&task.app, &task.service, task.slot));
            }
            DesiredState::Running => plan.stop.push(task.id.clone()),
            DesiredState::Stopped => {
                if task.status.state == TaskState::Stopped {
                    plan.remove.push(task.id.clone());
                }
            }
        }
    }

    for app in state.apps.values() {
        for service in &app.spec.services {
            for slot in 0..service.replicas {
                if filled.contains(&(app.spec.name.as_str(), service.name.as_str(), slot)) {
                    continue;
                }
                match least_loaded(&load) {
                    Some(node) => {
                        *load.entry(node).or_default() += 1;
                        plan.place.push(Placement {
                            app: app.spec.name.clone(),
                            service: service.name.clone(),
                            slot,
                            app_version: app.version,
                            node: node.to_string(),
                        });
                    }
                    None => plan.unplaced.push(Unplaced {
                        app: app.spec.name.clone(),
                        service: service.name.clone(),
                        slot,
                        reason: "no node is alive".into(),
                    }),
                }
            }
        }
    }
    plan
}

fn least_loaded<'a>(load: &BTreeMap<&'a str, usize>) -> Option<&'a str> {
    load.iter()
        .min_by_key(|(name, count)| (**count, **name))
        .map(|(name, _)| *name)
}

#[cfg(test)]
mod tests;
