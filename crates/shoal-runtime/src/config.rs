//! What a container is asked to be ([`ContainerConfig`]), and the checks
//! both drivers make on it before creating anything.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::{Result, RuntimeError};

/// The CFS period CPU limits are quotas of.
pub(crate) const CPU_PERIOD_US: u64 = 100_000;
pub(crate) const MILLICORES_PER_CPU: u64 = 1_000;

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
    /// What the container may do beyond the hardened defaults, and what it
    /// gives up; the default is the defaults.
    pub privileges: Privileges,
}

impl ContainerConfig {
    /// Container `id` of `image`, its output appended to `log_path`, its
    /// hostname its id: the image's own command, environment and user, no
    /// limits, labels or mounts, a network namespace of its own and the
    /// hardened defaults. The rest is set field by field.
    pub fn new(
        id: impl Into<String>,
        image: impl Into<String>,
        log_path: impl Into<PathBuf>,
    ) -> ContainerConfig {
        let id = id.into();
        ContainerConfig {
            hostname: id.clone(),
            id,
            image: image.into(),
            command: None,
            args: None,
            env: BTreeMap::new(),
            working_dir: None,
            user: None,
            cpu_millis: None,
            memory_bytes: None,
            labels: BTreeMap::new(),
            log_path: log_path.into(),
            network: NetworkMode::default(),
            mounts: Vec::new(),
            privileges: Privileges::default(),
        }
    }
}

/// Departures from the hardened defaults every container runs with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Privileges {
    /// Every capability, no seccomp filter, no masked or read-only kernel
    /// paths, `/sys` writable, every device allowed by the device cgroup.
    pub privileged: bool,
    /// The node's PID namespace instead of one of its own.
    pub host_pid: bool,
    /// The capabilities of the container's root, by name without `CAP_`
    /// (`NET_ADMIN`); the default set when `None`.
    pub capabilities: Option<Vec<String>>,
    /// The image's files mounted read-only.
    pub read_only_root: bool,
}

/// The network namespace of a container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// A new namespace of its own holding only its loopback, which runc
    /// brings up.
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
        || config
            .cpu_millis
            .is_some_and(|c| c > i64::MAX as u64 / (CPU_PERIOD_US / MILLICORES_PER_CPU))
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
