//! Standby nodes: for each service, the node that takes over a replica
//! lost with its node, named ahead so that it holds the service's image
//! before it is needed.
//!
//! The standby of a service is, among the nodes that admit it and run none
//! of its tasks, the one that ranks first for the service (rendezvous
//! hashing over `APP/SERVICE`). Every node names the same standby from its
//! own replica; the standby pulls the image ahead, and the scheduler, when
//! scores tie, places on the node that ranks first for the service, which
//! among the nodes that run none of it is that standby.

use std::collections::BTreeSet;

use shoal_state::fit;
use shoal_state::State;
use shoal_types::{DesiredState, Kind, Prepull, ServiceSpec};

/// The key nodes are ranked by for a service.
pub fn standby_key(app: &str, service: &str) -> String {
    format!("{app}/{service}")
}

/// The standby node of `service` of `app`, if a node admits it and runs
/// none of its tasks.
pub fn standby<'a>(state: &'a State, app: &str, service: &ServiceSpec) -> Option<&'a str> {
    let running: BTreeSet<&str> = state
        .tasks
        .values()
        .filter(|t| t.app == app && t.service == service.name)
        .filter(|t| t.desired == DesiredState::Running)
        .map(|t| t.node.as_str())
        .collect();
    standby_among(state, app, service, &running)
}

/// [`standby`], given the nodes where tasks of the service want to run.
pub fn standby_among<'a>(
    state: &'a State,
    app: &str,
    service: &ServiceSpec,
    running: &BTreeSet<&str>,
) -> Option<&'a str> {
    let key = standby_key(app, &service.name);
    free_admitting(state, service, running)
        // Equal ranks (a 64-bit collision) go to the smaller name, as in
        // placement, where the lower node index wins.
        .max_by_key(|node| {
            (
                shoal_types::rendezvous_rank(&key, &node.name),
                std::cmp::Reverse(node.name.as_str()),
            )
        })
        .map(|node| node.name.as_str())
}

/// The nodes that hold `service`'s image before they need it, by its
/// `prepull`: for `successors` its standby, for `all` every node that
/// admits it and runs none of it (the others run it), for `none` no node.
/// Only a `kind: service` with replicas wanted has such nodes: a global
/// service runs wherever it may, a batch job is not moved to a standby.
pub fn prepull_nodes<'a>(
    state: &'a State,
    app: &str,
    service: &ServiceSpec,
    running: &BTreeSet<&str>,
) -> Vec<&'a str> {
    if service.kind != Kind::Service || service.replicas == 0 {
        return Vec::new();
    }
    match service.prepull {
        Prepull::Successors => standby_among(state, app, service, running)
            .into_iter()
            .collect(),
        Prepull::All => free_admitting(state, service, running)
            .map(|node| node.name.as_str())
            .collect(),
        Prepull::None => Vec::new(),
    }
}

/// The nodes that admit `service` and run none of it.
fn free_admitting<'a, 's>(
    state: &'a State,
    service: &'s ServiceSpec,
    running: &'s BTreeSet<&str>,
) -> impl Iterator<Item = &'a shoal_types::Node> + 's
where
    'a: 's,
{
    state
        .nodes
        .values()
        .filter(move |node| !running.contains(node.name.as_str()))
        .filter(move |node| fit::admits(node, service).is_ok())
}
