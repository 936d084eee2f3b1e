//! The node's boundary to the container runtime.
//!
//! [`Runtime`] is the one small trait the node process drives; [`containerd`]
//! implements it over containerd's gRPC API, [`fake`] in memory for unit tests
//! and the simulator. Both pass the same conformance suite
//! (`tests/conformance.rs`).

pub mod containerd;
pub mod fake;
pub mod image;
pub mod logwriter;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Label every container made by shoal carries: its task id.
pub const LABEL_TASK: &str = "io.shoal.task";
/// Label with the attempt number of the task run in this container.
pub const LABEL_ATTEMPT: &str = "io.shoal.attempt";

/// What the node asks the runtime to run. Fields the spec leaves empty fall
/// back to the image's own config (entrypoint, cmd, env, working dir, user).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerConfig {
    /// The containerd container id (also the snapshot key).
    pub id: String,
    /// A normalized image reference, e.g. `docker.io/library/busybox:latest`.
    pub image: String,
    /// Replaces the image's entrypoint when set.
    pub command: Option<Vec<String>>,
    /// Replaces the image's cmd when set; when `command` is set and `args` is
    /// not, the image's cmd is dropped (as Docker and Kubernetes do).
    pub args: Option<Vec<String>>,
    /// Added to the image's environment, overriding same-named variables.
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    /// uid and gid; the image's user (numeric only) when unset, else 0:0.
    pub user: Option<(u32, u32)>,
    /// CPU limit in millicores (CFS quota over a 100 ms period).
    pub cpu_millis: Option<u64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// Container labels; the runtime adds nothing but what is given here.
    pub labels: BTreeMap<String, String>,
    /// stdout and stderr of the container's process are appended here.
    pub log_path: PathBuf,
    pub hostname: String,
    /// Which network namespace the container's process lives in.
    pub network: NetworkMode,
    /// Host files or directories bind-mounted into the container (e.g. its
    /// `/etc/resolv.conf`).
    pub mounts: Vec<BindMount>,
}

/// The network namespace of a container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// A new namespace of its own with nothing in it (loopback down).
    #[default]
    Isolated,
    /// The node's own namespace: its interfaces, addresses and ports.
    Host,
    /// A namespace made beforehand, e.g. `/var/run/netns/shoal-TASK` that
    /// CNI wired up.
    Path(PathBuf),
}

/// A host path bind-mounted into a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// Absolute path on the host.
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: PathBuf,
    pub read_only: bool,
}

/// The status of one container as the runtime sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ContainerStatus {
    /// The container exists but has no task (never started, or its task was deleted).
    Created,
    Running {
        pid: u32,
    },
    /// The task exited; it is kept until [`Runtime::remove`].
    Stopped {
        exit_code: i32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub id: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub status: ContainerStatus,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Full, normalized name: `docker.io/library/busybox:latest`.
    pub name: String,
    /// Digest of the manifest the name points to.
    pub digest: String,
    /// Sum of the (compressed) layer sizes plus config, in bytes.
    pub size_bytes: u64,
    /// Creation time in seconds since the Unix epoch, when known.
    pub created_s: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("image {0} is not on this node; import it with `shoal image import` (pulling from registries is not supported yet)")]
    ImageNotFound(String),
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("container {0} already exists")]
    ContainerExists(String),
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// The container config cannot be run as given (bad id, no command, limits out of range).
    #[error("invalid container config: {0}")]
    InvalidConfig(String),
    #[error("containerd: {0}")]
    Containerd(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Longest identifier (container id, namespace) containerd accepts.
pub const ID_CHARS_MAX: usize = 76;

/// Checks what both drivers must reject before creating anything: an id
/// containerd would refuse, a relative log path, limits out of range.
pub fn validate_config(config: &ContainerConfig) -> Result<()> {
    check_identifier("container id", &config.id)?;
    if !config.log_path.is_absolute() {
        return Err(RuntimeError::InvalidConfig(format!(
            "container {}: log path {} is not absolute",
            config.id,
            config.log_path.display()
        )));
    }
    if let NetworkMode::Path(path) = &config.network {
        if !path.is_absolute() {
            return Err(RuntimeError::InvalidConfig(format!(
                "container {}: network namespace path {} is not absolute",
                config.id,
                path.display()
            )));
        }
    }
    if let Some(mount) = config
        .mounts
        .iter()
        .find(|m| !m.source.is_absolute() || !m.destination.is_absolute())
    {
        return Err(RuntimeError::InvalidConfig(format!(
            "container {}: mount {} -> {} needs absolute paths",
            config.id,
            mount.source.display(),
            mount.destination.display()
        )));
    }
    if config
        .memory_bytes
        .is_some_and(|m| i64::try_from(m).is_err())
        || config.cpu_millis.is_some_and(|c| c > i64::MAX as u64 / 100)
    {
        return Err(RuntimeError::InvalidConfig(format!(
            "container {}: resource limits out of range",
            config.id
        )));
    }
    Ok(())
}

/// containerd's identifier rule: alphanumeric runs joined by single `.`, `_`
/// or `-`, at most [`ID_CHARS_MAX`] long.
pub(crate) fn check_identifier(kind: &str, id: &str) -> Result<()> {
    let bad = |why: &str| Err(RuntimeError::InvalidConfig(format!("{kind} {id:?} {why}")));
    if id.is_empty() {
        return bad("is empty");
    }
    if id.len() > ID_CHARS_MAX {
        return bad(&format!("is longer than {ID_CHARS_MAX} characters"));
    }
    let mut after_separator = true;
    for c in id.chars() {
        if c.is_ascii_alphanumeric() {
            after_separator = false;
        } else if matches!(c, '.' | '_' | '-') && !after_separator {
            after_separator = true;
        } else {
            return bad("must be alphanumeric runs joined by single '.', '_' or '-'");
        }
    }
    if after_separator {
        return bad("must not end with a separator");
    }
    Ok(())
}

/// The container runtime as the node process sees it. Every method is
/// idempotent where the doc says so, so that the node's reconciler can retry
/// after a crash without knowing how far the last attempt got.
pub trait Runtime: Send + Sync + 'static {
    /// Connects and prepares (creates the namespace when missing).
    fn ensure_ready(&self) -> impl Future<Output = Result<()>> + Send;

    /// Creates the container (with a fresh rootfs snapshot keyed by its id)
    /// and starts its process; returns the pid. Fails with
    /// [`RuntimeError::ContainerExists`] when the id is taken (callers remove
    /// first) and [`RuntimeError::ImageNotFound`] when the image is missing.
    fn run(&self, config: &ContainerConfig) -> impl Future<Output = Result<u32>> + Send;

    /// Sends SIGTERM, waits up to `grace`, then SIGKILL; returns the exit
    /// code. Idempotent: a container that is not running gives its last exit
    /// code (or `None` when it never ran), a missing container `None`.
    fn stop(&self, id: &str, grace: Duration) -> impl Future<Output = Result<Option<i32>>> + Send;

    /// Deletes the task (killing it if it still runs), the container and its
    /// snapshot. Idempotent: a missing container is not an error.
    fn remove(&self, id: &str) -> impl Future<Output = Result<()>> + Send;

    /// Every container in this runtime's namespace that carries [`LABEL_TASK`].
    fn list(&self) -> impl Future<Output = Result<Vec<ContainerInfo>>> + Send;

    fn images(&self) -> impl Future<Output = Result<Vec<ImageInfo>>> + Send;

    /// Imports an OCI image layout tarball or a `docker save` tarball and
    /// unpacks it for the runtime's snapshotter. `name` overrides the name the
    /// archive carries (required when it carries none).
    fn import(
        &self,
        archive: PathBuf,
        name: Option<String>,
    ) -> impl Future<Output = Result<Vec<ImageInfo>>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["a", "a-b.c_d", "task-1.2", &"x".repeat(ID_CHARS_MAX)] {
            assert!(check_identifier("id", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a--b",
            "a/b",
            "a b",
            &"x".repeat(ID_CHARS_MAX + 1),
        ] {
            assert!(check_identifier("id", bad).is_err(), "{bad}");
        }
    }
}
