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
//!
//! This module holds the client and its ADD and CHECK; the rest is split by
//! job:
//!
//! - `config`: what a run is given (the network configuration list, the
//!   attachment and its ports), checked before anything runs.
//! - `plugin`: running one plugin: finding its binary, its `CNI_*`
//!   variables, its configuration on stdin, and reading what it printed.
//! - `result`: what plugins print: the 1.0.0 result of ADD and the error
//!   object.
//! - `cache`: the ADD results on disk, written atomically.
//! - `teardown`: DEL from the cached result, the rollback of a failed ADD,
//!   and namespaces that are already gone.

mod cache;
mod config;
mod plugin;
mod result;
mod teardown;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use crate::exec::{ExecError, ExecLimits};

pub use cache::CachedAttachment;
pub use config::{Attachment, NetworkConfigList, PortMapping};
pub use plugin::plugin_stdin_config;
pub use result::{
    parse_failure, parse_result, CniResult, Dns, Interface, IpConfig, PluginErrorBody, Route,
};
pub use teardown::is_namespace;

use cache::CACHE_KIND;

/// Where Debian's containernetworking-plugins live.
pub const PLUGIN_DIR_DEFAULT: &str = "/usr/lib/cni";
/// The CNI version we write in configurations and expect in results.
pub const CNI_VERSION: &str = "1.0.0";
/// Plugins in one list; a longer list is a configuration mistake.
pub const PLUGINS_PER_LIST_MAX: usize = 16;
/// Bytes of a cache file we agree to read back.
pub const CACHE_FILE_BYTES_MAX: u64 = 1024 * 1024;

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
}
