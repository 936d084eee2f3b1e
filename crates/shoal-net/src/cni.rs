//! A client of the CNI protocol (spec 1.0.0): run the plugins of a network
//! configuration list against a container's network namespace.
//!
//! The protocol is small: exec the plugin binary with `CNI_*` variables,
//! give it the network configuration as JSON on stdin, read a result or an
//! error as JSON from stdout. What is not small is getting teardown right, so
//! the result of every ADD is cached on disk (atomically, one file per
//! container and network) and DEL hands it back to each plugin as
//! `prevResult`, even after the agent crashed and restarted. DEL is
//! idempotent: a missing cache file or network namespace is not an error.
//!
//! Blocking: every call runs child processes; call it from a blocking thread.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::exec::{run_bounded, ExecError, ExecLimits};

/// Where Debian's containernetworking-plugins live.
pub const PLUGIN_DIR_DEFAULT: &str = "/usr/lib/cni";
/// The CNI version we write in configurations and expect in results.
pub const CNI_VERSION: &str = "1.0.0";
/// Plugins in one list; a longer list is a configuration mistake.
pub const PLUGINS_PER_LIST_MAX: usize = 16;
/// Bytes of a cache file we agree to read back.
pub const CACHE_FILE_BYTES_MAX: u64 = 1024 * 1024;

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
    fn plugin_type(&self, index: usize) -> Result<&str, CniError> {
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

    fn validate(&self) -> Result<(), CniError> {
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

/// Why a CNI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("network `{network}`: invalid configuration: {reason}")]
    Config { network: String, reason: String },
    #[error("invalid attachment: {reason}")]
    Attachment { reason: String },
    #[error("CNI plugin `{plugin}` not found in {dirs}; install containernetworking-plugins or set the plugin directory")]
    PluginNotFound { plugin: String, dirs: String },
    #[error(
        "CNI plugin `{plugin}` {command} failed with code {code}: {msg}{}",
        details_suffix(details)
    )]
    Plugin {
        plugin: String,
        command: &'static str,
        /// The CNI error code (1-99 are the spec's, e.g. 7 invalid config).
        code: u32,
        msg: String,
        details: String,
    },
    #[error("CNI plugin `{plugin}` {command} exited with {exit} without a CNI error: {stderr}")]
    PluginCrashed {
        plugin: String,
        command: &'static str,
        exit: String,
        stderr: String,
    },
    #[error(
        "CNI plugin `{plugin}` {command} printed a result we cannot read ({reason}): {stdout}"
    )]
    BadResult {
        plugin: String,
        command: &'static str,
        reason: String,
        stdout: String,
    },
    #[error("running CNI plugin `{plugin}` {command}: {source}")]
    Exec {
        plugin: String,
        command: &'static str,
        #[source]
        source: ExecError,
    },
    #[error("CNI result cache {path}: {reason}; remove the file if it is corrupt (the plugins' DEL also works without it)")]
    Cache { path: PathBuf, reason: String },
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({details})")
    }
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
fn preview(bytes: &[u8]) -> String {
    const PREVIEW_BYTES_MAX: usize = 512;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(PREVIEW_BYTES_MAX)]);
    text.trim().to_owned()
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

/// The plugin configuration handed to one plugin on stdin: its own object
/// from the list plus the list's `cniVersion` and `name`, the previous
/// result, and the capability arguments it declared.
pub fn plugin_stdin_config(
    list: &NetworkConfigList,
    index: usize,
    prev_result: Option<&CniResult>,
    capability_args: &BTreeMap<String, Value>,
) -> Result<Value, CniError> {
    let mut config: Map<String, Value> = match list.plugins.get(index) {
        Some(Value::Object(map)) => map.clone(),
        _ => {
            return Err(CniError::Config {
                network: list.name.clone(),
                reason: format!("plugins[{index}]: must be a JSON object"),
            })
        }
    };
    config.insert("cniVersion".into(), json!(list.cni_version));
    config.insert("name".into(), json!(list.name));
    if let Some(prev) = prev_result {
        config.insert("prevResult".into(), json!(prev));
    }
    let declared: Vec<&String> = match config.get("capabilities") {
        Some(Value::Object(caps)) => caps
            .iter()
            .filter(|(_, on)| on.as_bool() == Some(true))
            .map(|(name, _)| name)
            .collect(),
        _ => Vec::new(),
    };
    let runtime_config: Map<String, Value> = capability_args
        .iter()
        .filter(|(name, _)| declared.contains(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    if !runtime_config.is_empty() {
        config.insert("runtimeConfig".into(), Value::Object(runtime_config));
    }
    Ok(Value::Object(config))
}

/// A namespace that is gone (the task and its namespace were removed while
/// we were down) is passed as empty, which the spec allows for DEL; the
/// plugins then release what they hold outside of it.
fn without_missing_netns(attachment: &Attachment) -> Attachment {
    let mut attachment = attachment.clone();
    if !attachment.netns.as_os_str().is_empty() && !is_namespace(&attachment.netns) {
        attachment.netns = PathBuf::new();
    }
    attachment
}

/// Whether `path` is a network namespace (a file of the nsfs filesystem,
/// as a bind-mounted namespace is), not a missing path or the plain file
/// left when the namespace's mount is gone (after a reboot, or made in
/// another mount namespace).
pub fn is_namespace(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(path), fs::metadata("/proc/self/ns/net")) {
        (Ok(file), Ok(own)) => file.dev() == own.dev(),
        _ => false,
    }
}

/// What DEL needs after a crash, one file per container and network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CachedAttachment {
    pub kind: String,
    pub attachment: Attachment,
    /// The configuration ADD ran with, so DEL tears down what was set up
    /// even when the node's configuration changed since.
    pub config: NetworkConfigList,
    pub result: CniResult,
}

const CACHE_KIND: &str = "shoal-cni-cache-v1";

/// Runs CNI plugins and keeps the ADD results on disk.
#[derive(Clone, Debug)]
pub struct Cni {
    /// Directories searched for plugin binaries, in order (`CNI_PATH`).
    pub plugin_dirs: Vec<PathBuf>,
    /// Where ADD results are cached (e.g. `DATA_DIR/cni/results`).
    pub cache_dir: PathBuf,
    /// Limits for each plugin run.
    pub limits: ExecLimits,
}

impl Cni {
    /// A client with the default plugin directory and limits.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            plugin_dirs: vec![PathBuf::from(PLUGIN_DIR_DEFAULT)],
            cache_dir: cache_dir.into(),
            limits: ExecLimits::default(),
        }
    }

    /// Runs ADD through the list in order, caches the final result and
    /// returns it. When a plugin fails, the plugins that ran (the failed one
    /// included, it may have done half its work) get DEL in reverse, best
    /// effort, and the ADD error is returned.
    pub fn add(
        &self,
        list: &NetworkConfigList,
        attachment: &Attachment,
    ) -> Result<CniResult, CniError> {
        list.validate()?;
        attachment.validate()?;
        let mut prev: Option<CniResult> = None;
        for index in 0..list.plugins.len() {
            match self.exec_plugin("ADD", list, index, attachment, prev.as_ref()) {
                Ok(Some(result)) => prev = Some(result),
                Ok(None) => {
                    return Err(CniError::BadResult {
                        plugin: list.plugin_type(index)?.to_owned(),
                        command: "ADD",
                        reason: "empty output".into(),
                        stdout: String::new(),
                    })
                }
                Err(add_error) => {
                    self.roll_back(list, attachment, prev.as_ref(), index + 1);
                    return Err(add_error);
                }
            }
        }
        let result = prev.unwrap_or_default();
        self.write_cache(&CachedAttachment {
            kind: CACHE_KIND.into(),
            attachment: attachment.clone(),
            config: list.clone(),
            result: result.clone(),
        })?;
        Ok(result)
    }

    /// Runs DEL through the list in reverse, giving each plugin the cached
    /// ADD result, then forgets the cache file. Uses the cached
    /// configuration when there is one, else `list`. Succeeds when there is
    /// nothing left to delete.
    pub fn del(&self, list: &NetworkConfigList, attachment: &Attachment) -> Result<(), CniError> {
        list.validate()?;
        attachment.validate()?;
        let cached = self.read_cache(&list.name, &attachment.container_id)?;
        let (config, result) = match &cached {
            Some(c) => (&c.config, Some(&c.result)),
            None => (list, None),
        };
        self.del_plugins(config, attachment, result)?;
        self.remove_cache(&list.name, &attachment.container_id)
    }

    /// Runs CHECK through the list in order with the cached ADD result.
    pub fn check(&self, list: &NetworkConfigList, attachment: &Attachment) -> Result<(), CniError> {
        list.validate()?;
        attachment.validate()?;
        let cached = self
            .read_cache(&list.name, &attachment.container_id)?
            .ok_or_else(|| CniError::Cache {
                path: self.cache_path(&list.name, &attachment.container_id),
                reason: "no cached ADD result, so there is nothing to check".into(),
            })?;
        for index in 0..list.plugins.len() {
            self.exec_plugin("CHECK", list, index, attachment, Some(&cached.result))?;
        }
        Ok(())
    }

    /// The CNI versions a plugin supports (its VERSION answer).
    pub fn plugin_versions(&self, plugin: &str) -> Result<Vec<String>, CniError> {
        #[derive(Deserialize)]
        struct VersionAnswer {
            #[serde(rename = "supportedVersions")]
            supported_versions: Vec<String>,
        }
        let path = self.find_plugin(plugin)?;
        let stdin = json!({ "cniVersion": CNI_VERSION });
        let output = self.run("VERSION", plugin, &path, &[], &stdin)?;
        if !output.success() {
            return Err(parse_failure(
                plugin,
                "VERSION",
                output.code,
                &output.stdout,
                &output.stderr,
            ));
        }
        let answer: VersionAnswer =
            serde_json::from_slice(&output.stdout).map_err(|e| CniError::BadResult {
                plugin: plugin.to_owned(),
                command: "VERSION",
                reason: e.to_string(),
                stdout: preview(&output.stdout),
            })?;
        Ok(answer.supported_versions)
    }

    /// The containers with a cached ADD result on `network`, to tear down
    /// leftovers after a crash.
    pub fn cached_containers(&self, network: &str) -> Result<Vec<String>, CniError> {
        let prefix = format!("{network}-");
        let entries = match fs::read_dir(&self.cache_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(CniError::Cache {
                    path: self.cache_dir.clone(),
                    reason: e.to_string(),
                })
            }
        };
        let mut ids = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".json"))
            {
                ids.push(id.to_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The cached ADD result of a container on a network, if any.
    pub fn cached_result(
        &self,
        network: &str,
        container_id: &str,
    ) -> Result<Option<CachedAttachment>, CniError> {
        self.read_cache(network, container_id)
    }

    /// DEL of every plugin in reverse; stops at the first error so that the
    /// cache stays for the caller's retry.
    fn del_plugins(
        &self,
        list: &NetworkConfigList,
        attachment: &Attachment,
        prev: Option<&CniResult>,
    ) -> Result<(), CniError> {
        let attachment = without_missing_netns(attachment);
        for index in (0..list.plugins.len()).rev() {
            self.exec_plugin("DEL", list, index, &attachment, prev)?;
        }
        Ok(())
    }

    /// DEL of the first `ran` plugins in reverse, going on past errors:
    /// after a failed ADD there is no cache to retry from.
    fn roll_back(
        &self,
        list: &NetworkConfigList,
        attachment: &Attachment,
        prev: Option<&CniResult>,
        ran: usize,
    ) {
        let attachment = without_missing_netns(attachment);
        for index in (0..ran.min(list.plugins.len())).rev() {
            if let Err(del_error) = self.exec_plugin("DEL", list, index, &attachment, prev) {
                tracing::warn!(%del_error, "rolling back a failed CNI ADD");
            }
        }
    }

    fn exec_plugin(
        &self,
        command: &'static str,
        list: &NetworkConfigList,
        index: usize,
        attachment: &Attachment,
        prev: Option<&CniResult>,
    ) -> Result<Option<CniResult>, CniError> {
        let plugin = list.plugin_type(index)?;
        let path = self.find_plugin(plugin)?;
        let stdin = plugin_stdin_config(list, index, prev, &attachment.capability_args)?;
        let cni_args = attachment
            .args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        let env = [
            ("CNI_CONTAINERID", attachment.container_id.clone()),
            ("CNI_NETNS", attachment.netns.to_string_lossy().into_owned()),
            ("CNI_IFNAME", attachment.ifname.clone()),
            ("CNI_ARGS", cni_args),
        ];
        let output = self.run(command, plugin, &path, &env, &stdin)?;
        if !output.success() {
            return Err(parse_failure(
                plugin,
                command,
                output.code,
                &output.stdout,
                &output.stderr,
            ));
        }
        if command != "ADD" || output.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        parse_result(plugin, command, &output.stdout).map(Some)
    }

    fn run(
        &self,
        command: &'static str,
        plugin: &str,
        path: &Path,
        env: &[(&str, String)],
        stdin: &Value,
    ) -> Result<crate::exec::CommandOutput, CniError> {
        let cni_path = std::env::join_paths(&self.plugin_dirs)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut full_env = vec![
            ("CNI_COMMAND".to_owned(), command.to_owned()),
            ("CNI_PATH".to_owned(), cni_path),
        ];
        full_env.extend(env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let stdin_bytes = serde_json::to_vec(stdin).map_err(|e| CniError::Config {
            network: String::new(),
            reason: e.to_string(),
        })?;
        tracing::debug!(plugin, command, "running CNI plugin");
        run_bounded(
            &path.to_string_lossy(),
            &[],
            &full_env,
            Some(&stdin_bytes),
            self.limits,
        )
        .map_err(|source| CniError::Exec {
            plugin: plugin.to_owned(),
            command,
            source,
        })
    }

    fn find_plugin(&self, plugin: &str) -> Result<PathBuf, CniError> {
        self.plugin_dirs
            .iter()
            .map(|dir| dir.join(plugin))
            .find(|path| path.is_file())
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: plugin.to_owned(),
                dirs: self
                    .plugin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            })
    }

    /// `CACHE_DIR/NETWORK-CONTAINER.json`; both parts were validated as
    /// plain file-name characters.
    pub fn cache_path(&self, network: &str, container_id: &str) -> PathBuf {
        self.cache_dir
            .join(format!("{network}-{container_id}.json"))
    }

    fn read_cache(
        &self,
        network: &str,
        container_id: &str,
    ) -> Result<Option<CachedAttachment>, CniError> {
        let path = self.cache_path(network, container_id);
        let cache_error = |reason: String| CniError::Cache {
            path: path.clone(),
            reason,
        };
        let metadata = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(cache_error(e.to_string())),
        };
        if metadata.len() > CACHE_FILE_BYTES_MAX {
            return Err(cache_error(format!(
                "larger than {CACHE_FILE_BYTES_MAX} bytes"
            )));
        }
        let bytes = fs::read(&path).map_err(|e| cache_error(e.to_string()))?;
        let cached: CachedAttachment =
            serde_json::from_slice(&bytes).map_err(|e| cache_error(e.to_string()))?;
        if cached.kind != CACHE_KIND {
            return Err(cache_error(format!(
                "kind `{}` is not `{CACHE_KIND}`",
                cached.kind
            )));
        }
        Ok(Some(cached))
    }

    /// Writes to a temporary file, syncs it, renames it over the final name
    /// and syncs the directory: a crash leaves the old file or the new one.
    fn write_cache(&self, cached: &CachedAttachment) -> Result<(), CniError> {
        let path = self.cache_path(&cached.config.name, &cached.attachment.container_id);
        let cache_error = |reason: String| CniError::Cache {
            path: path.clone(),
            reason,
        };
        fs::create_dir_all(&self.cache_dir).map_err(|e| cache_error(e.to_string()))?;
        let bytes = serde_json::to_vec_pretty(cached).map_err(|e| cache_error(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.cache_dir)?.sync_all()
        };
        write().map_err(|e| cache_error(e.to_string()))
    }

    fn remove_cache(&self, network: &str, container_id: &str) -> Result<(), CniError> {
        let path = self.cache_path(network, container_id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CniError::Cache {
                path,
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shaped like what the bridge plugin (with host-local) prints on ADD.
    const BRIDGE_RESULT: &str = r#"{
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "shoal0", "mac": "5a:1e:3c:00:00:01"},
            {"name": "veth1234", "mac": "5a:1e:3c:00:00:02"},
            {"name": "eth0", "mac": "5a:1e:3c:00:00:03", "sandbox": "/var/run/netns/shoal-t1"}
        ],
        "ips": [{"interface": 2, "address": "10.42.0.2/24", "gateway": "10.42.0.1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.42.0.1"}],
        "dns": {}
    }"#;

    fn list() -> NetworkConfigList {
        serde_json::from_value(json!({
            "cniVersion": "1.0.0",
            "name": "shoal",
            "plugins": [
                {"type": "bridge", "bridge": "shoal0"},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn a_1_0_0_result_is_parsed() {
        let result = parse_result("bridge", "ADD", BRIDGE_RESULT.as_bytes()).unwrap();
        assert_eq!(result.interfaces.len(), 3);
        assert_eq!(result.ips[0].gateway, Some("10.42.0.1".parse().unwrap()));
        assert_eq!(result.routes[0].dst, "0.0.0.0/0");
        assert_eq!(
            result.container_ip("eth0"),
            Some("10.42.0.2".parse().unwrap())
        );
        assert_eq!(result.container_ip("shoal0"), None);
        // Round trip: what we cache is what we read.
        let again: CniResult = serde_json::from_value(json!(result)).unwrap();
        assert_eq!(again, result);
    }

    #[test]
    fn a_result_we_cannot_read_names_the_plugin() {
        let err = parse_result("bridge", "ADD", b"{\"ips\": 3}").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("CNI plugin `bridge` ADD printed a result we cannot read"),
            "{text}"
        );
    }

    #[test]
    fn a_plugin_error_becomes_a_typed_error() {
        let stdout = br#"{"cniVersion":"1.0.0","code":7,"msg":"invalid config","details":"bridge name too long"}"#;
        let err = parse_failure("bridge", "ADD", Some(1), stdout, b"");
        match &err {
            CniError::Plugin {
                plugin,
                code,
                msg,
                details,
                ..
            } => {
                assert_eq!((plugin.as_str(), *code), ("bridge", 7));
                assert_eq!(
                    (msg.as_str(), details.as_str()),
                    ("invalid config", "bridge name too long")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "CNI plugin `bridge` ADD failed with code 7: invalid config (bridge name too long)"
        );
        let err = parse_failure("portmap", "DEL", None, b"panic: oops", b"");
        assert_eq!(
            err.to_string(),
            "CNI plugin `portmap` DEL exited with a signal without a CNI error: panic: oops"
        );
    }

    #[test]
    fn each_plugin_gets_name_version_prev_result_and_only_its_capabilities() {
        let list = list();
        let prev = parse_result("bridge", "ADD", BRIDGE_RESULT.as_bytes()).unwrap();
        let mut caps = BTreeMap::new();
        caps.insert(
            "portMappings".to_owned(),
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
        );
        caps.insert("bandwidth".to_owned(), json!({"ingressRate": 1}));

        let bridge = plugin_stdin_config(&list, 0, None, &caps).unwrap();
        assert_eq!(bridge["cniVersion"], "1.0.0");
        assert_eq!(bridge["name"], "shoal");
        assert_eq!(bridge["bridge"], "shoal0");
        assert!(bridge.get("prevResult").is_none());
        assert!(bridge.get("runtimeConfig").is_none());

        let portmap = plugin_stdin_config(&list, 1, Some(&prev), &caps).unwrap();
        assert_eq!(portmap["prevResult"]["ips"][0]["address"], "10.42.0.2/24");
        assert_eq!(
            portmap["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
        );
    }

    #[test]
    fn port_mappings_use_the_cni_field_names() {
        let a =
            Attachment::new("t1", "/var/run/netns/x", "eth0").with_port_mappings(&[PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
            }]);
        assert_eq!(
            a.capability_args["portMappings"],
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
        );
    }

    #[test]
    fn names_that_would_escape_the_cache_dir_are_refused() {
        let mut bad = list();
        bad.name = "../etc".into();
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("name: `../etc`"));
        let attachment = Attachment::new("a/b", "/x", "eth0");
        assert!(attachment
            .validate()
            .unwrap_err()
            .to_string()
            .contains("container_id"));
        let attachment = Attachment::new("ok", "/x", "a-very-long-interface");
        assert!(attachment
            .validate()
            .unwrap_err()
            .to_string()
            .contains("ifname"));
        let mut bad = list();
        bad.plugins[1] = json!({"type": "../../bin/sh"});
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("plugins[1].type"));
    }

    #[test]
    fn the_cache_is_written_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let cni = Cni::new(dir.path().join("results"));
        let cached = CachedAttachment {
            kind: CACHE_KIND.into(),
            attachment: Attachment::new("t1", "/var/run/netns/shoal-t1", "eth0"),
            config: list(),
            result: parse_result("bridge", "ADD", BRIDGE_RESULT.as_bytes()).unwrap(),
        };
        cni.write_cache(&cached).unwrap();
        assert_eq!(cni.read_cache("shoal", "t1").unwrap(), Some(cached));
        assert_eq!(cni.cached_containers("shoal").unwrap(), vec!["t1"]);
        assert!(!cni
            .cache_path("shoal", "t1")
            .with_extension("json.tmp")
            .exists());
        cni.remove_cache("shoal", "t1").unwrap();
        cni.remove_cache("shoal", "t1").unwrap();
        assert_eq!(cni.read_cache("shoal", "t1").unwrap(), None);
    }

    #[test]
    fn a_missing_plugin_is_reported_with_the_dirs_searched() {
        let dir = tempfile::tempdir().unwrap();
        let mut cni = Cni::new(dir.path());
        cni.plugin_dirs = vec![dir.path().to_path_buf()];
        let err = cni
            .add(&list(), &Attachment::new("t1", "/nonexistent", "eth0"))
            .unwrap_err();
        assert!(matches!(err, CniError::PluginNotFound { .. }), "{err}");
        // DEL of something never added, with no plugin and no cache: the
        // plugin is still needed to release what it may hold.
        assert!(cni
            .del(&list(), &Attachment::new("t1", "/nonexistent", "eth0"))
            .is_err());
    }
}
