//! What a plugin run is given: the network configuration list and the
//! attachment (container, namespace, interface, published ports), both
//! checked before anything runs, since their names become file names.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{CniError, PLUGINS_PER_LIST_MAX};

/// A CNI network configuration list (a "conflist"): a name and the plugins
/// to chain, each a JSON object with at least a `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfigList {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    pub plugins: Vec<Value>,
}

impl NetworkConfigList {
    /// The plugin type (binary name) of the plugin at `index`.
    pub(super) fn plugin_type(&self, index: usize) -> Result<&str, CniError> {
        self.plugins
            .get(index)
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
            .ok_or_else(|| CniError::Config {
                network: self.name.clone(),
                reason: format!("plugins[{index}].type: missing or not a string"),
            })
    }

    /// Checks what we rely on before running anything.
    pub fn validate(&self) -> Result<(), CniError> {
        let config_error = |reason: String| CniError::Config {
            network: self.name.clone(),
            reason,
        };
        validate_file_name_part("name", &self.name).map_err(config_error)?;
        if self.plugins.is_empty() || self.plugins.len() > PLUGINS_PER_LIST_MAX {
            return Err(config_error(format!(
                "plugins: must hold 1 to {PLUGINS_PER_LIST_MAX} plugins, got {}",
                self.plugins.len()
            )));
        }
        for index in 0..self.plugins.len() {
            let plugin_type = self.plugin_type(index)?;
            if plugin_type.is_empty() || plugin_type.contains('/') || plugin_type.starts_with('.') {
                return Err(config_error(format!(
                    "plugins[{index}].type: `{plugin_type}` must be a plain binary name"
                )));
            }
        }
        Ok(())
    }
}

/// One port published on the node: traffic to `host_port` on the node goes
/// to `container_port` of the task (CNI's `portMappings` capability).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// What identifies one attachment of a container to a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The container (task) id; letters, digits, `_`, `.` and `-` only.
    pub container_id: String,
    /// Path of the network namespace, e.g. `/var/run/netns/shoal-ID`.
    pub netns: PathBuf,
    /// Interface name inside the namespace, e.g. `eth0`.
    pub ifname: String,
    /// `CNI_ARGS` pairs (`K=V;K=V`), rarely needed.
    #[serde(default)]
    pub args: Vec<(String, String)>,
    /// Capability arguments, e.g. `portMappings`; each is passed in
    /// `runtimeConfig` only to the plugins that declare the capability.
    #[serde(default)]
    pub capability_args: BTreeMap<String, Value>,
}

impl Attachment {
    pub fn new(container_id: &str, netns: impl Into<PathBuf>, ifname: &str) -> Self {
        Self {
            container_id: container_id.to_owned(),
            netns: netns.into(),
            ifname: ifname.to_owned(),
            args: Vec::new(),
            capability_args: BTreeMap::new(),
        }
    }

    /// Publishes ports through the `portMappings` capability.
    pub fn with_port_mappings(mut self, mappings: &[PortMapping]) -> Self {
        self.capability_args
            .insert("portMappings".into(), json!(mappings));
        self
    }

    pub(super) fn validate(&self) -> Result<(), CniError> {
        let invalid = |reason: String| CniError::Attachment { reason };
        validate_file_name_part("container_id", &self.container_id).map_err(invalid)?;
        if self.ifname.is_empty() || self.ifname.len() > 15 || self.ifname.contains(['/', ' ', ':'])
        {
            return Err(invalid(format!(
                "ifname: `{}` must be 1 to 15 characters without `/`, `:` or spaces",
                self.ifname
            )));
        }
        Ok(())
    }
}

/// Container ids and network names become file names: keep them plain.
fn validate_file_name_part(field: &str, value: &str) -> Result<(), String> {
    const NAME_BYTES_MAX: usize = 128;
    let ok = !value.is_empty()
        && value.len() <= NAME_BYTES_MAX
        && !value.starts_with('.')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field}: `{value}` must be 1 to {NAME_BYTES_MAX} letters, digits, `_`, `.` or `-`, not starting with `.`"
        ))
    }
}
