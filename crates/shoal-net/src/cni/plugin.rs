//! Running one plugin: its binary found in the plugin directories, the
//! `CNI_*` variables, its configuration on stdin (with the previous result
//! and the capabilities it declared), and what it printed read back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::exec::run_bounded;

use super::result::preview;
use super::{
    parse_failure, parse_result, Attachment, Cni, CniError, CniResult, NetworkConfigList,
    CNI_VERSION,
};

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

impl Cni {
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

    pub(super) fn exec_plugin(
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

    pub(super) fn run(
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

    pub(super) fn find_plugin(&self, plugin: &str) -> Result<PathBuf, CniError> {
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
}
