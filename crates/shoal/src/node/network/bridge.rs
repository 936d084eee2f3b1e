//! The node's bridge: the CNI conflist for its subnet (generated, or the
//! operator's `--cni-config` filled in) and the bridge itself, with the
//! subnet's first address.

use std::path::Path;

use shoal_net::bridge::BridgeNetwork;
use shoal_net::cni::NetworkConfigList;
use shoal_net::exec::{args, CommandRunner};
use shoal_net::subnet::Ipv4Cidr;

use super::{NodeNetwork, Ready};

/// Largest `--cni-config` file read.
pub const CNI_CONFIG_BYTES_MAX: u64 = 64 * 1024;

/// A conflist template made into the node's conflist.
pub fn render_conflist(
    template: &str,
    subnet: Ipv4Cidr,
    bridge: &str,
    ipam_dir: &Path,
) -> anyhow::Result<NetworkConfigList> {
    let text = template
        .replace("$SUBNET", &subnet.to_string())
        .replace("$GATEWAY", &subnet.gateway().to_string())
        .replace("$BRIDGE", bridge)
        .replace("$IPAM_DIR", &ipam_dir.to_string_lossy());
    let list: NetworkConfigList = serde_json::from_str(&text).map_err(|error| {
        anyhow::anyhow!("not a CNI conflist ({error}); see `shoal agent --help`")
    })?;
    list.validate()?;
    Ok(list)
}

impl NodeNetwork {
    /// Makes the bridge with the subnet's first address (the tasks'
    /// gateway and the DNS server's address) and brings it up. Blocking.
    pub(super) fn prepare(&self, subnet: Ipv4Cidr) -> anyhow::Result<Ready> {
        let ipam_dir = self.dir.join("cni").join("ipam");
        let list = match &self.config.cni_config {
            Some(template) => render_conflist(template, subnet, &self.config.bridge, &ipam_dir)?,
            None => {
                let mut network = BridgeNetwork::new(subnet, ipam_dir);
                network.bridge = self.config.bridge.clone();
                network.conflist()?
            }
        };
        let bridge = self.config.bridge.as_str();
        let exists = self
            .runner
            .run("ip", &args(&["link", "show", "dev", bridge]))?
            .success();
        if !exists {
            self.ip(&["link", "add", "name", bridge, "type", "bridge"])?;
        }
        let address = format!("{}/{}", subnet.gateway(), subnet.prefix_len());
        // A subnet given anew (the node was forgotten and came back) replaces the old one.
        let shown = self
            .runner
            .run("ip", &args(&["-4", "-o", "addr", "show", "dev", bridge]))?;
        if !shown.stdout_text().contains(&format!(" {address} ")) {
            self.ip(&["addr", "flush", "dev", bridge])?;
            self.ip(&["addr", "add", &address, "dev", bridge])?;
        }
        self.ip(&["link", "set", bridge, "up"])?;
        Ok(Ready { subnet, list })
    }

    pub(super) fn ip(&self, parts: &[&str]) -> anyhow::Result<()> {
        shoal_net::exec::run_checked(&self.runner, "ip", &args(parts))?;
        Ok(())
    }
}
