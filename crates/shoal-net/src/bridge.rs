//! The per-node network: a Linux bridge with the node's subnet, built from
//! the standard CNI plugins.
//!
//! `bridge` makes the bridge (the tasks' gateway) and a veth pair per task,
//! `host-local` hands out addresses of the node's subnet and keeps its
//! leases under our data dir, `portmap` publishes ports. Masquerading is off
//! in the bridge plugin because [`crate::routes`] masquerades only traffic
//! that leaves the cluster CIDR: traffic between tasks of different nodes
//! keeps its source address. The loopback interface is brought up by
//! [`crate::netns`] when it makes the namespace.

use std::path::PathBuf;

use serde_json::json;

use crate::cni::{NetworkConfigList, PortMapping, CNI_VERSION};
use crate::subnet::Ipv4Cidr;
use shoal_types::Protocol;

/// The bridge's name when the operator gives none.
pub const BRIDGE_NAME_DEFAULT: &str = "shoal0";
/// The CNI network name when the operator gives none.
pub const NETWORK_NAME_DEFAULT: &str = "shoal";
/// Linux interface names hold at most 15 bytes.
pub const IFNAME_BYTES_MAX: usize = 15;

/// How a node's bridge network is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeNetwork {
    /// The CNI network name (also names the cache files and lease dir).
    pub name: String,
    /// The Linux bridge, e.g. `shoal0`.
    pub bridge: String,
    /// The node's subnet; its first address is the bridge's (the gateway).
    pub subnet: Ipv4Cidr,
    /// host-local's `dataDir`, e.g. `DATA_DIR/cni/ipam`: leases live there,
    /// one file per address under a directory named after the network.
    pub ipam_data_dir: PathBuf,
    /// The MTU of the bridge and veths; the plugin's default when unset.
    pub mtu: Option<u32>,
}

/// What is wrong with a bridge network's settings.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BridgeError {
    #[error("bridge: `{0}` must be 1 to 15 characters without `/`, `:` or spaces (a Linux interface name)")]
    BridgeName(String),
    #[error("subnet: {0} is smaller than a /30; a node needs room for its gateway and tasks")]
    SubnetTooSmall(Ipv4Cidr),
    #[error("ports: host port 0 is not a port; give the port to publish on the node")]
    HostPortZero,
}

impl BridgeNetwork {
    /// A network with the default names.
    pub fn new(subnet: Ipv4Cidr, ipam_data_dir: impl Into<PathBuf>) -> Self {
        Self {
            name: NETWORK_NAME_DEFAULT.into(),
            bridge: BRIDGE_NAME_DEFAULT.into(),
            subnet,
            ipam_data_dir: ipam_data_dir.into(),
            mtu: None,
        }
    }

    pub fn validate(&self) -> Result<(), BridgeError> {
        if self.bridge.is_empty()
            || self.bridge.len() > IFNAME_BYTES_MAX
            || self.bridge.contains(['/', ':', ' '])
        {
            return Err(BridgeError::BridgeName(self.bridge.clone()));
        }
        if self.subnet.prefix_len() > 30 {
            return Err(BridgeError::SubnetTooSmall(self.subnet));
        }
        Ok(())
    }

    /// The directory where host-local keeps this network's leases (one
    /// file named after each address in use).
    pub fn lease_dir(&self) -> PathBuf {
        self.ipam_data_dir.join(&self.name)
    }

    /// The conflist: `bridge` with `host-local`, then `portmap`.
    pub fn conflist(&self) -> Result<NetworkConfigList, BridgeError> {
        self.validate()?;
        let mut bridge = json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            // We masquerade ourselves, only traffic leaving the cluster.
            "ipMasq": false,
            // A task may reach itself through its service address.
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": self.ipam_data_dir.to_string_lossy(),
                "ranges": [[{
                    "subnet": self.subnet.to_string(),
                    "gateway": self.subnet.gateway().to_string(),
                }]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        });
        if let (Some(mtu), Some(object)) = (self.mtu, bridge.as_object_mut()) {
            object.insert("mtu".into(), json!(mtu));
        }
        let portmap = json!({
            "type": "portmap",
            "capabilities": {"portMappings": true},
            // So that a task reaches a port published on its own node.
            "snat": true,
        });
        Ok(NetworkConfigList {
            cni_version: CNI_VERSION.into(),
            name: self.name.clone(),
            plugins: vec![bridge, portmap],
        })
    }
}

/// A port of a task published on its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishedPort {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

/// The `portMappings` capability arguments for `ports`.
pub fn port_mappings(ports: &[PublishedPort]) -> Result<Vec<PortMapping>, BridgeError> {
    ports
        .iter()
        .map(|p| {
            if p.host_port == 0 {
                return Err(BridgeError::HostPortZero);
            }
            Ok(PortMapping {
                host_port: p.host_port,
                // Port 0 inside means "the same as outside".
                container_port: if p.container_port == 0 {
                    p.host_port
                } else {
                    p.container_port
                },
                protocol: p.protocol.as_str().to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::plugin_stdin_config;
    use std::collections::BTreeMap;

    fn network() -> BridgeNetwork {
        BridgeNetwork::new("10.42.3.0/24".parse().unwrap(), "/var/lib/shoal/cni/ipam")
    }

    #[test]
    fn the_conflist_chains_bridge_and_portmap() {
        let list = network().conflist().unwrap();
        assert_eq!(list.cni_version, "1.0.0");
        assert_eq!(list.name, "shoal");
        list.validate().unwrap();
        let bridge = &list.plugins[0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "shoal0");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["hairpinMode"], true);
        assert!(bridge.get("mtu").is_none());
        let ipam = &bridge["ipam"];
        assert_eq!(ipam["type"], "host-local");
        assert_eq!(ipam["dataDir"], "/var/lib/shoal/cni/ipam");
        assert_eq!(ipam["ranges"][0][0]["subnet"], "10.42.3.0/24");
        assert_eq!(ipam["ranges"][0][0]["gateway"], "10.42.3.1");
        assert_eq!(ipam["routes"], json!([{"dst": "0.0.0.0/0"}]));
        let portmap = &list.plugins[1];
        assert_eq!(portmap["type"], "portmap");
        assert_eq!(portmap["capabilities"]["portMappings"], true);
        assert_eq!(portmap["snat"], true);
        assert_eq!(
            network().lease_dir(),
            PathBuf::from("/var/lib/shoal/cni/ipam/shoal")
        );
    }

    #[test]
    fn the_mtu_is_passed_when_set() {
        let mut n = network();
        n.mtu = Some(1400);
        assert_eq!(n.conflist().unwrap().plugins[0]["mtu"], 1400);
    }

    #[test]
    fn bad_settings_are_refused_with_the_field_named() {
        let mut n = network();
        n.bridge = "a-bridge-name-too-long".into();
        assert!(n
            .conflist()
            .unwrap_err()
            .to_string()
            .starts_with("bridge: "));
        let mut n = network();
        n.subnet = "10.42.3.0/31".parse().unwrap();
        assert!(n
            .conflist()
            .unwrap_err()
            .to_string()
            .starts_with("subnet: "));
    }

    #[test]
    fn published_ports_reach_portmap_only() {
        let ports = [
            PublishedPort {
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp,
            },
            PublishedPort {
                host_port: 5353,
                container_port: 0,
                protocol: Protocol::Udp,
            },
        ];
        let mappings = port_mappings(&ports).unwrap();
        let mut caps = BTreeMap::new();
        caps.insert("portMappings".to_owned(), json!(mappings));
        let list = network().conflist().unwrap();
        assert!(plugin_stdin_config(&list, 0, None, &caps)
            .unwrap()
            .get("runtimeConfig")
            .is_none());
        assert_eq!(
            plugin_stdin_config(&list, 1, None, &caps).unwrap()["runtimeConfig"],
            json!({"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 5353, "containerPort": 5353, "protocol": "udp"},
            ]})
        );
        let zero = PublishedPort {
            host_port: 0,
            container_port: 80,
            protocol: Protocol::Tcp,
        };
        assert_eq!(port_mappings(&[zero]), Err(BridgeError::HostPortZero));
    }
}
