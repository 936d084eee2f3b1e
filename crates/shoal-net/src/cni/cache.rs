//! The ADD results on disk, one file per network and container, written
//! atomically, so that DEL works after the agent crashed and restarted.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Attachment, Cni, CniError, CniResult, NetworkConfigList, CACHE_FILE_BYTES_MAX};

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

pub(super) const CACHE_KIND: &str = "shoal-cni-cache-v1";

impl Cni {
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

    /// `CACHE_DIR/NETWORK-CONTAINER.json`; both parts were validated as
    /// plain file-name characters.
    pub fn cache_path(&self, network: &str, container_id: &str) -> PathBuf {
        self.cache_dir
            .join(format!("{network}-{container_id}.json"))
    }

    pub(super) fn read_cache(
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
    pub(super) fn write_cache(&self, cached: &CachedAttachment) -> Result<(), CniError> {
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

    pub(super) fn remove_cache(&self, network: &str, container_id: &str) -> Result<(), CniError> {
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
