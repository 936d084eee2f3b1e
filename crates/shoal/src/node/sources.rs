//! Which source addresses are nodes': the IP addresses of the nodes' API
//! endpoints in the replicated state. The server gives handshakes from
//! them a share of their own, so that a flood of handshakes from other
//! addresses does not keep the nodes from reaching each other. (A node
//! reaches the others from the address it advertises on a flat network;
//! where it does not, its handshakes share the others' lot, as before.)

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_cluster::raft::RaftNode;
use shoal_state::State as ClusterState;

/// How long the set of nodes' addresses is kept before it is read again
/// from the state.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// The IP addresses of the nodes' API endpoints (a host given by name is
/// left out: the address a handshake comes from is not looked up).
pub fn node_addresses(state: &ClusterState) -> HashSet<IpAddr> {
    state
        .nodes
        .values()
        .filter_map(|node| shoal_http::Endpoint::parse(&node.addr).ok()?.ip())
        .collect()
}

/// What the server asks of each accepted connection's address, read from
/// `raft`'s replica at most every [`REFRESH_EVERY`].
pub fn node_sources(raft: RaftNode) -> shoal_http::NodeSources {
    let known: Mutex<Option<(Instant, HashSet<IpAddr>)>> = Mutex::new(None);
    shoal_http::NodeSources(Arc::new(move |ip| {
        let mut known = known.lock().unwrap_or_else(|p| p.into_inner());
        let stale = known
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= REFRESH_EVERY);
        if stale {
            *known = Some((Instant::now(), node_addresses(&raft.read())));
        }
        known
            .as_ref()
            // A dual-stack listener sees IPv4 peers as `::ffff:a.b.c.d`.
            .is_some_and(|(_, addresses)| addresses.contains(&ip.to_canonical()))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_addresses_are_their_api_endpoints_ips() {
        let mut state = ClusterState::default();
        for (name, addr) in [
            ("a", "10.0.0.5:7950"),
            ("b", "https://[2001:db8::7]:7950"),
            ("c", "node-c.example:7950"),
        ] {
            state
                .nodes
                .insert(name.to_string(), shoal_types::Node::sample(name, addr));
        }
        let addresses = node_addresses(&state);
        assert_eq!(addresses.len(), 2, "{addresses:?}");
        assert!(addresses.contains(&"10.0.0.5".parse::<IpAddr>().expect("ip")));
        assert!(addresses.contains(&"2001:db8::7".parse::<IpAddr>().expect("ip")));
    }
}
