//! What plugins print: the CNI 1.0.0 result of ADD (interfaces, addresses,
//! routes, DNS) and the error object of a failure, parsed into our types.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::CniError;

/// The CNI 1.0.0 result of ADD.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl CniResult {
    /// The first address given to the interface named `ifname` inside the
    /// container (what the task is reached at).
    pub fn container_ip(&self, ifname: &str) -> Option<IpAddr> {
        self.ips
            .iter()
            .find(|ip| {
                ip.interface
                    .and_then(|i| self.interfaces.get(i))
                    .is_some_and(|i| i.name == ifname && i.sandbox.is_some())
            })
            .and_then(|ip| ip.address.split('/').next())
            .and_then(|a| a.parse().ok())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The namespace path when the interface lives in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR form, e.g. `10.42.0.2/24`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// The error object a plugin prints on failure.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PluginErrorBody {
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

/// Parses what a plugin printed on success.
pub fn parse_result(
    plugin: &str,
    command: &'static str,
    stdout: &[u8],
) -> Result<CniResult, CniError> {
    serde_json::from_slice(stdout).map_err(|e| CniError::BadResult {
        plugin: plugin.to_owned(),
        command,
        reason: e.to_string(),
        stdout: preview(stdout),
    })
}

/// Turns a failed run into the plugin's own error when it printed one.
pub fn parse_failure(
    plugin: &str,
    command: &'static str,
    exit: Option<i32>,
    stdout: &[u8],
    stderr: &[u8],
) -> CniError {
    match serde_json::from_slice::<PluginErrorBody>(stdout) {
        Ok(body) => CniError::Plugin {
            plugin: plugin.to_owned(),
            command,
            code: body.code,
            msg: body.msg,
            details: body.details,
        },
        Err(_) => CniError::PluginCrashed {
            plugin: plugin.to_owned(),
            command,
            exit: exit.map_or_else(|| "a signal".to_owned(), |c| format!("code {c}")),
            stderr: preview(if stderr.is_empty() { stdout } else { stderr }),
        },
    }
}

/// The first bytes of some output, for error messages.
pub(super) fn preview(bytes: &[u8]) -> String {
    const PREVIEW_BYTES_MAX: usize = 512;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(PREVIEW_BYTES_MAX)]);
    text.trim().to_owned()
}
