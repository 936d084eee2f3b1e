//! Routes to the other nodes' subnets and the masquerade rule of the
//! node's own chain, both kept from the replicated state.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use shoal_net::routes::{HostRoutes, Masquerade};
use shoal_net::subnet::Ipv4Cidr;
use shoal_state::State;

use super::NodeNetwork;

impl NodeNetwork {
    /// Routes to the other nodes' subnets, and the masquerade rule of the
    /// node's own chain. Blocking.
    pub(super) fn sync_routes(
        &self,
        cluster: Ipv4Cidr,
        wanted: &BTreeMap<Ipv4Cidr, Ipv4Addr>,
    ) -> anyhow::Result<()> {
        let changes = HostRoutes::new(self.runner.clone(), cluster).sync(wanted)?;
        for change in &changes {
            tracing::info!(?change, "route to another node's subnet");
        }
        if self.ready().is_some() {
            Masquerade::new(self.runner.clone(), cluster)
                .with_chain(&masquerade_chain(&self.config.bridge))
                .ensure()?;
        }
        Ok(())
    }
}

/// The node's own iptables chain for masquerading, named after its bridge.
pub fn masquerade_chain(bridge: &str) -> String {
    format!("SHOAL-{bridge}")
}

/// Routes this node needs: every other node's subnet via its advertised
/// address. Nodes advertising a loopback address share this host, so their
/// bridges are reachable directly and need no route.
pub fn desired_routes(state: &State, me: &str) -> BTreeMap<Ipv4Cidr, Ipv4Addr> {
    state
        .nodes
        .values()
        .filter(|node| node.name != me)
        .filter_map(|node| {
            let subnet = Ipv4Cidr::parse("subnet", node.subnet.as_deref()?).ok()?;
            let host = node
                .addr
                .rsplit_once(':')
                .map_or(node.addr.as_str(), |(h, _)| h);
            let via: Ipv4Addr = host.parse().ok()?;
            (!via.is_loopback() && !via.is_unspecified()).then_some((subnet, via))
        })
        .collect()
}
